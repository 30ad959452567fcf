//! The image being built is hostile (issue 14): what its scripts or packages write must not run
//! on the host, reach host files outside the build's outputs, or exhaust the host's memory.
//! Each test plays the guest's part with a fixture element and checks the host afterwards.

mod common;
use common::*;

/// root.d (in the guest) plants code where extra-data.d (on the host) would once pick it up: an
/// environment.d file in the guest's hooks, and a line appended to the extra-data.d script there.
/// The host runs its own copy of the hooks, so the real script runs and neither plant does.
#[test]
fn guest_cannot_change_what_extra_data_d_runs() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/planter/root.d" "$d/els/planter/extra-data.d"
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
chmod +x "$d/els/planter/root.d/50-plant" "$d/els/planter/extra-data.d/10-real"
export MARKER_ENV="$d/marker-env" MARKER_SCRIPT="$d/marker-script"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats raw \
   --image-cache "$d/cache" --envvar MARKER_ENV --envvar MARKER_SCRIPT fixture-os planter > "$d/log" 2>&1
echo "host: status=$?"
sed 's/^/log: /' "$d/log"
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
}

/// A script that prints 256 MiB of zeros (no newline at all) keeps microdib's memory small:
/// output is passed on and only a bounded tail is kept (it was accumulated and rescanned per
/// frame: gigabytes and hours).
#[test]
fn endless_script_output_keeps_host_memory_bounded() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/noisy/install.d"
printf '#!/bin/bash\nhead -c 256M /dev/zero\necho\necho noise done >&2\n' > "$d/els/noisy/install.d/10-noise"
chmod +x "$d/els/noisy/install.d/10-noise"
timeout -k 5 900 "$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats raw \
   --image-cache "$d/cache" fixture-os noisy > "$d/stdout" 2> "$d/stderr" &
pid=$!
hwm=0
while kill -0 $pid 2>/dev/null; do
    m=$(ps -o pid= --ppid $pid | head -1 | tr -d ' ') # timeout's child: microdib
    v=$(awk '/^VmHWM/ {{print $2}}' /proc/$m/status 2>/dev/null)
    [ -n "$v" ] && hwm=$v
    sleep 0.2
done
wait $pid
echo "host: status=$?"
echo "host: hwm-kib=$hwm"
echo "host: stdout-bytes=$(stat -c %s "$d/stdout")"
sed 's/^/stderr: /' "$d/stderr" | tail -5
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("host: status=0");
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
}
