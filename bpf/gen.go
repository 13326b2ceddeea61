package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type origin -type peer_key -type counter redirect redirect.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
