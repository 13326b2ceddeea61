package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type origin -type peer_key -type counter -type refusal -type refusal_kind redirect redirect.c -- -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel guard guard.c -- -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -type offload_req -type adopt_result -type agent_state offload offload.c -- -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu
