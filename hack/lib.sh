# Sourced by the hack/ scripts (`. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`): the one place for
# what several of them do. Sets `root` (the source tree), `here` (hack/) and `me` (the script's
# name), and answers -h/--help with the script's header comment.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here=$root/hack
me=$(basename "$0")

# The script's header comment is its help; sourcing without arguments sees the script's own, so
# every script answers a first -h/--help.
show_help() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
case "${1:-}" in -h|--help) show_help ;; esac

die() { echo "$me: error: $*" >&2; exit 1; }
usage() { echo "$me: error: $*" >&2; exit 2; }
# A positive whole number from the command line, or DEFAULT: count_arg NAME DEFAULT [VALUE].
count_arg() { [[ "${3:-$2}" =~ ^[1-9][0-9]*$ ]] || usage "$1 must be a positive number"; echo "${3:-$2}"; }

# microdib's cache directory, spelled as initramfs::cache_root() spells it (tests/hack.rs
# checks that the two agree).
cache_root() {
  if [ -n "${XDG_CACHE_HOME:-}" ]; then echo "$XDG_CACHE_HOME/microdib"
  elif [ -n "${HOME:-}" ]; then echo "$HOME/.cache/microdib"
  else echo /tmp/microdib; fi
}

# Builds the guest agent (a static musl binary, where microdib looks for it in a source tree)
# and prints its path.
build_agent() {
  (cd "$root" && CARGO_TARGET_DIR=target/guest cargo build --release -q -p microdib-agent --target x86_64-unknown-linux-musl) || return
  echo "$root/target/guest/x86_64-unknown-linux-musl/release/microdib-agent"
}

# Builds target/release/microdib (and the other bins named with --bin) with the agent and the
# guest kernel, exported as MICRODIB_AGENT and MICRODIB_KERNEL: what a build from this tree uses.
build_microdib() {
  (cd "$root" && cargo build --release -q --bin microdib "$@") || exit
  MICRODIB_AGENT=$(build_agent) || exit
  MICRODIB_KERNEL=$("$here/build-kernel") || exit
  export MICRODIB_AGENT MICRODIB_KERNEL
}

# Runs microdib-dev (src/bin/microdib-dev/): $MICRODIB_DEV when set (the tests set it: no cargo
# inside `cargo test`), else built here.
dev_tool() {
  if [ -z "${MICRODIB_DEV:-}" ]; then
    (cd "$root" && cargo build --release -q --bin microdib-dev) || return
    MICRODIB_DEV=$root/target/release/microdib-dev
  fi
  "$MICRODIB_DEV" "$@"
}

# The guest kernel's command line as microdib boots it: kernel_cmdline microdib-vmm|qemu|tcg.
kernel_cmdline() { dev_tool kernel-cmdline "$1"; }

# A statically linked busybox (the probe and test initramfs hold it), or an error.
static_busybox() {
  local b
  for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then echo "$b"; return 0; fi
  done
  die "a statically linked busybox is needed (apt-get install busybox-static)"
}

# Where this host's KVM cannot run Linux (PVM, no /dev/kvm), runs COMMAND inside hack/nested-run
# instead and does not return: nested_unless_kvm SECS COMMAND...
nested_unless_kvm() {
  local secs=$1 why; shift
  why=$("$root/target/release/microdib-vmm" --check-kvm 2>&1) && return 0
  echo "$me: ${why#microdib-vmm: error: }; running inside hack/nested-run" >&2
  exec "$here/nested-run" --timeout "$secs" -- "$@"
}

# The host, for the first line of a benchmark: date, cores, CPU model.
host_line() {
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
}

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# The example image's boot (hack/example-build, hack/package-check): BIOS, EXTLINUX, kernel,
# initramfs, then its greeting on the serial console. boot_hello IMAGE CONSOLE prints the line.
boot_hello() {
  timeout 300 qemu-system-x86_64 -accel tcg -m 256 -display none -no-reboot -serial "file:$2" \
    -drive "file=$1,format=qcow2,snapshot=on" || true
  grep -m1 '^hello-boot: booted' "$2" | tr -d '\r' | grep .
}
