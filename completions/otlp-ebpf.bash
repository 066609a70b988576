
_otlp_ebpf_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _OTLP_EBPF_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _otlp_ebpf_completion otlp-ebpf

