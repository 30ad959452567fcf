_microdib() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="microdib"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        microdib)
            opts="-B -p -m -q -u -V -v -x --accel --arch --cache-clear --cache-dir --cache-list --cache-max-age --cache-max-size --checksum --colors --colour --colours --color --debug --debug-gc --docker-target --drive --drive-format --element-path --envvar --exclude-element --exclude-script --extra-packages --formats --fs-type --help --image-cache --install-type --memsize --machine-readable --mkfs-options --name --network --network-host-loopback --no-cache --no-delete-on-failure --no-network --python --quiet --qemu-img-options --ramdisk --ramdisk-element --root-label --size --skip-base --smp --squashfs-compression --version --verbose --wrap --short-options --long-options"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --accel)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --arch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -B)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-max-age)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-max-size)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --debug)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --docker-target)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --drive)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --drive-format)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --element-path)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -p)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --envvar)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --exclude-element)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --exclude-script)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --extra-packages)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --formats)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --fs-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --image-cache)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --install-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --memsize)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -m)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --machine-readable)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --mkfs-options)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --name)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --python)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --qemu-img-options)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ramdisk-element)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --root-label)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --size)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --smp)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --squashfs-compression)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _microdib -o nosort -o bashdefault -o default microdib
else
    complete -F _microdib -o bashdefault -o default microdib
fi
