//! The image being built is hostile: what its scripts or packages write must not run
//! on the host, reach host files outside the build's outputs, or exhaust the host's memory.
//! Each test plays the guest's part with a fixture element and checks the host afterwards.

mod common;
use common::*;

/// One build, three hostile elements.
/// - root.d (in the guest) plants code where extra-data.d (on the host) would once pick it up:
///   an environment.d file in the guest's hooks, and a line appended to the extra-data.d script
///   there. The host runs its own copy of the hooks, so the real script runs and neither plant
///   does.
/// - A script prints 256 MiB of zeros (no newline at all): microdib's memory stays small, the
///   output is passed on and only a bounded tail is kept (it was once accumulated and rescanned
///   per frame: gigabytes and hours).
/// - root.d writes 3 MiB to the serial console: the host's console log keeps its head and its
///   latest output, never more than 2 MiB (sampled while the build runs).
#[test]
fn a_guest_neither_changes_what_the_host_runs_nor_exhausts_its_memory() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/tmp" "$d/els/planter/root.d" "$d/els/planter/extra-data.d" "$d/els/noisy/install.d" "$d/els/flooder/root.d"
cat > "$d/els/planter/root.d/50-plant" <<'EOS'
#!/bin/bash
set -e
# (In the guest's own later phases the host's paths do not exist: harmless there.)
echo 'touch "$MARKER_ENV" 2>/dev/null || :' > "$TMP_HOOKS_PATH/environment.d/00-t.bash"
echo 'touch "$MARKER_SCRIPT" 2>/dev/null || :' >> "$TMP_HOOKS_PATH/extra-data.d/10-real"
echo planted
EOS
cat > "$d/els/planter/extra-data.d/10-real" <<'EOS'
#!/bin/bash
echo "real extra-data.d ran"
EOS
printf '#!/bin/bash\nhead -c 256M /dev/zero\necho\necho noise done >&2\n' > "$d/els/noisy/install.d/10-noise"
printf '#!/bin/bash\nhead -c 3M /dev/zero | tr "\\\\0" x > /dev/ttyS0\n' > "$d/els/flooder/root.d/60-flood"
chmod +x "$d/els/planter/root.d/50-plant" "$d/els/planter/extra-data.d/10-real" "$d/els/noisy/install.d/10-noise" \
    "$d/els/flooder/root.d/60-flood"
export MARKER_ENV="$d/marker-env" MARKER_SCRIPT="$d/marker-script" TMPDIR="$d/tmp"
timeout -k 5 900 "$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats raw \
   --image-cache "$d/cache" --envvar MARKER_ENV --envvar MARKER_SCRIPT fixture-os planter noisy flooder \
   > "$d/stdout" 2> "$d/stderr" &
pid=$!
hwm=0 console=0
while kill -0 $pid 2>/dev/null; do
    c=$(find "$d/tmp" -name console.log -printf '%s\n' 2>/dev/null | sort -n | tail -1)
    [ -n "$c" ] && [ "$c" -gt "$console" ] && console=$c
    m=$(ps -o pid= --ppid $pid | head -1 | tr -d ' ') # timeout's child: microdib
    v=$(awk '/^VmHWM/ {{print $2}}' /proc/$m/status 2>/dev/null)
    [ -n "$v" ] && hwm=$v
    sleep 0.2
done
wait $pid
echo "host: status=$?"
echo "host: hwm-kib=$hwm"
echo "host: console-max=$console"
echo "host: stdout-bytes=$(stat -c %s "$d/stdout")"
tr -d '\0' < "$d/stdout" | grep -e '^planted$' -e '^real extra-data.d ran$' | sed 's/^/log: /'
sed 's/^/stderr: /' "$d/stderr" | tail -5
ls "$d" | sed 's/^/file: /'
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("host: status=0");
    has("log: planted");
    has("log: real extra-data.d ran");
    assert!(!s.contains("file: marker-env"), "the guest's environment.d ran on the host:\n{s}");
    assert!(!s.contains("file: marker-script"), "the guest's extra-data.d script ran on the host:\n{s}");
    let hwm: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("host: hwm-kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memory figure:\n{s}"));
    assert!(hwm > 0 && hwm < 256 * 1024, "microdib's peak memory was {hwm} KiB:\n{s}");
    // All of it was passed on, none kept.
    let bytes: u64 =
        s.lines().find_map(|l| l.strip_prefix("host: stdout-bytes=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(bytes > 256 << 20, "{s}");
    // 3 MiB written to the serial console: the host's log kept within its 2 MiB.
    let console: u64 =
        s.lines().find_map(|l| l.strip_prefix("host: console-max=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(console > 0 && console <= 2 << 20, "the console log reached {console} bytes:\n{s}");
}

/// The helper drive (`--drive`) is written by the guest. One that writes the qcow2 magic into
/// its first sector does not turn a raw helper into a qcow2 image of its own making on the next
/// build; and a helper in use by one build is refused at once by a second, as is a second build
/// with the same `--name`.
#[test]
fn the_helper_drive_keeps_its_format_and_is_locked_while_in_use() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"# Under target/, whose file system keeps extended attributes (where the decision is kept).
d=$(mktemp -d -p "$PWD/target")
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/magic/root.d" "$d/els/sleeper/install.d"
truncate -s 256M "$d/helper.img" && mkfs.ext4 -q -F "$d/helper.img"
cat > "$d/els/magic/root.d/50-magic" <<'EOS'
#!/bin/bash
# The first 1024 bytes of an ext4 file system are unused: it stays mountable.
printf 'QFI\373' | dd of=/run/microdib/disk/microdib-helper bs=4 count=1 conv=notrunc,fsync status=none
echo "magic: $(head -c 4 /run/microdib/disk/microdib-helper | od -An -c | tr -d ' ')"
EOS
# Long enough for the two refused builds below, which fail before any VM starts.
printf '#!/bin/bash\necho sleeping\nsleep 12\n' > "$d/els/sleeper/install.d/10-sleep"
chmod +x "$d/els/magic/root.d/50-magic" "$d/els/sleeper/install.d/10-sleep"
run() {{
    name=$1; shift
    "$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/$name" --size 256M --formats raw \
       --image-cache "$d/cache" --drive "$d/helper.img" fixture-os "$@"
}}
run one magic > "$d/one.log" 2>&1
echo "one: status=$?"
grep '^magic:' "$d/one.log"
echo "host: helper starts with $(head -c 4 "$d/helper.img" | od -An -c | tr -d ' ')"
run two > "$d/two.log" 2>&1
echo "two: status=$?"
grep 'error' "$d/two.log" | sed 's/^/two: /'
# Two builds on one helper: the second is refused at once.
run three sleeper > "$d/three.log" 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q '^sleeping' "$d/three.log" && break; sleep 0.5; done
start=$(date +%s)
run four > "$d/four.log" 2>&1
echo "four: status=$? after $(( $(date +%s) - start )) s"
sed 's/^/four: /' "$d/four.log" | grep error
# A second build with the same --name (another helper): refused at once too.
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/three" --size 256M --formats raw \
   --image-cache "$d/cache" fixture-os > "$d/five.log" 2>&1
echo "five: status=$?"
sed 's/^/five: /' "$d/five.log" | grep error
wait $pid
echo "three: status=$?"
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("one: status=0");
    has(r"magic: QFI373");
    has(r"host: helper starts with QFI373");
    has("two: status=0");
    has("three: status=0");
    assert!(
        s.lines().any(|l| l.starts_with("five: microdib: error: another build is writing the outputs named ")),
        "{s}"
    );
    has("five: status=1");
    let four = s.lines().find(|l| l.starts_with("four: status=")).unwrap_or_else(|| panic!("{s}"));
    let secs: u64 = four.rsplit(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    assert!(four.starts_with("four: status=1 ") && secs < 10, "{four}\n{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("four: microdib: error: ") && l.contains("helper.img is in use by another build")),
        "{s}"
    );
}

/// microdib killed with SIGKILL (no chance to clean up) in the middle of extra-data.d: the host
/// script it runs dies with it within 2 s (PR_SET_PDEATHSIG on every child microdib starts),
/// as the build VM's qemu and passt do (`sigkill_mid_build_leaves_no_qemu_or_passt`).
#[test]
fn sigkill_mid_extra_data_leaves_no_host_script() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"; pkill -KILL -f "host-sleeper-[7]00" || true' EXIT
mkdir -p "$d/out" "$d/els/host-sleeper/extra-data.d"
# (Named so that pgrep finds it and not this script, whose text holds the name's recipe.)
printf '#!/bin/bash\necho host sleeping\nexec -a "host-sleeper-$((7*100))" sleep 600\n' > "$d/els/host-sleeper/extra-data.d/10-sleep"
chmod +x "$d/els/host-sleeper/extra-data.d/10-sleep"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats raw \
   --image-cache "$d/cache" --debug 1 fixture-os host-sleeper > "$d/log" 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q '^host sleeping' "$d/log" && break; sleep 0.5; done
echo "before: $(pgrep -fc -- "host-sleeper-[7]00" || true)"
kill -KILL $pid
wait $pid 2>/dev/null
sleep 2
echo "after: $(pgrep -fc -- "host-sleeper-[7]00" || true)"
tmp=$(sed -n 's/.*tmpdir: //p' "$d/log"); case $tmp in */microdib.*) rm -rf "$tmp" ;; esac
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("before: 1");
    has("after: 0");
}
