# A phase checkpoint's guest side. `freeze`: everything the root's file system holds is written
# to its disk, which then stays still while the host copies it. `thaw`: the build goes on.
set -e
case "$1" in
    freeze)
        sync
        fsfreeze --freeze "$MICRODIB_SYSROOT"
        ;;
    thaw)
        fsfreeze --unfreeze "$MICRODIB_SYSROOT"
        ;;
    *)
        echo "checkpoint.sh: freeze or thaw, not '$1'" >&2
        exit 2
        ;;
esac
