set terminal png size 1280,620
set output 'benches/results/loopback.png'
set title "heddle's cost per packet over each peer's (median of per-round ratios, 95% interval); below 1: heddle ahead"
set style data histograms
set style histogram errorbars gap 2 lw 1
set style fill solid 0.7
set key top left
set xtics rotate by -35 scale 0
set rmargin 12
set yrange [0:*]
set grid ytics
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 dt 2
plot 'benches/results/loopback-ratios.dat' using 2:3:4:xtic(1) title 'vs testpmd io-fwd', 'benches/results/loopback-ratios.dat' using 5:6:7 title 'vs OVS-DPDK', 'benches/results/loopback-ratios.dat' using 8:9:10 title 'vs heddle net\_vhost'
