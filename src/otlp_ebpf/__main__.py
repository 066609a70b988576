from otlp_ebpf.entry import main

main()
