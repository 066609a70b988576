from otlp_ebpf.cli.app import main

main()
