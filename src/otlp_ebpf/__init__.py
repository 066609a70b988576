"""otlp-ebpf: eBPF profiling for the command line, with flamegraphs, standard files and OTLP."""

__version__ = "0.1.0"
