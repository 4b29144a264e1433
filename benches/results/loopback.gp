set terminal png size 1200,520
set output 'benches/results/loopback.png'
set multiplot layout 1,2
set style data histograms
set style histogram clustered
set style fill solid 0.8
set key top right
set xtics rotate by -25
set yrange [0:*]
set title 'generator Mpps received (2 pods)'
plot 'benches/results/loopback-mpps.dat' using 2:xtic(1) title '64 B', 'benches/results/loopback-mpps.dat' using 3 title '512 B', 'benches/results/loopback-mpps.dat' using 4 title '1518 B'
set title 'switch core cycles per packet'
plot 'benches/results/loopback-cycles.dat' using 2:xtic(1) title '64 B', 'benches/results/loopback-cycles.dat' using 3 title '512 B', 'benches/results/loopback-cycles.dat' using 4 title '1518 B'
unset multiplot
