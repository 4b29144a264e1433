set terminal png size 1200,1000
set output 'benches/results/loopback.png'
set multiplot layout 2,2
set style data histograms
set style histogram clustered
set style fill solid 0.8
set key top right
set xtics rotate by -25
set yrange [0:*]
set title 'generator Mpps received (2 pods)'
plot 'benches/results/loopback-mpps.dat' using 2:xtic(1) title '64 B', 'benches/results/loopback-mpps.dat' using 3 title '1518 B'
set title 'switch core cycles per packet (2 pods)'
plot 'benches/results/loopback-cycles.dat' using 2:xtic(1) title '64 B', 'benches/results/loopback-cycles.dat' using 3 title '1518 B'
set style data linespoints
unset xtics
set xtics nomirror
set logscale x 2
set xlabel 'pods (vhost-user ports) on one PMD core'
set key top right
set title 'generator Mpps received by pods (64 B)'
plot 'benches/results/loopback-scale.dat' using 1:2 with linespoints title 'heddle-native', 'benches/results/loopback-scale.dat' using 1:4 with linespoints title 'heddle-vhost', 'benches/results/loopback-scale.dat' using 1:6 with linespoints title 'testpmd-vhost', 'benches/results/loopback-scale.dat' using 1:8 with linespoints title 'ovs-vhost'
set title 'switch core cycles per packet by pods (64 B)'
plot 'benches/results/loopback-scale.dat' using 1:3 with linespoints title 'heddle-native', 'benches/results/loopback-scale.dat' using 1:5 with linespoints title 'heddle-vhost', 'benches/results/loopback-scale.dat' using 1:7 with linespoints title 'testpmd-vhost', 'benches/results/loopback-scale.dat' using 1:9 with linespoints title 'ovs-vhost'
unset multiplot
