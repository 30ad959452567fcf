# After a phase: the processes its scripts left running in the image (a daemon a package's
# postinst started, a backgrounded sleep), whose root or working directory is in the sysroot,
# are killed, as diskimage-builder's kill_chroot_processes does; they would keep the image from
# being unmounted. Prints `PID NAME` for each, and waits (up to 5 s) until they are gone.
root=$MICRODIB_SYSROOT
inside() {
    case $1 in "$root"|"$root"/*) return 0 ;; esac
    return 1
}
killed=
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    r=$(readlink "$p/root" 2>/dev/null) || continue
    d=$(readlink "$p/cwd" 2>/dev/null) || d=
    inside "$r" || inside "$d" || continue
    name=$(cat "$p/comm" 2>/dev/null) || name=unknown
    if kill -KILL "$pid" 2>/dev/null; then
        echo "$pid $name"
        killed="$killed $pid"
    fi
done
# A killed process has let go of the image once its root link is gone (a zombie has none).
for _ in $(seq 50); do
    left=
    for pid in $killed; do
        readlink "/proc/$pid/root" >/dev/null 2>&1 && left=1
    done
    [ -z "$left" ] && exit 0
    sleep 0.1
done
exit 0
