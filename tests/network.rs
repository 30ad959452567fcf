//! The appliance network (passt): a root.d script (in the appliance) and an install.d script
//! (in the chroot, through bash's /dev/tcp) try to fetch a file from an HTTP server on the
//! host's loopback through the gateway address. By default the host's loopback is out of reach;
//! with --network-host-loopback they fetch it. The chroot sees the appliance's resolv.conf
//! while it runs and the target keeps its own. With --no-network the same fetch fails at once
//! and DIB_OFFLINE=1. passt is gone after a success and a failure (after SIGTERM: tests/signals.rs).
//! Our VMM runs the fetch too (its network device); the rest is the engine's and passt's
//! handling, which both backends share.

mod common;
use common::*;

on_each_backend!(
    the_network_reaches_only_what_it_is_given, the_network_reaches_only_what_it_is_given_on_our_kvm => network_build
);

const ROOT_D: &str = r#"#!/bin/bash
echo "root.d: DIB_OFFLINE=[$DIB_OFFLINE]"
start=$(date +%s%N)
if curl -fsS --max-time "${FETCH_MAX_TIME:-60}" -o "$TARGET_ROOT/fetched" "http://10.0.2.2:$FETCH_PORT/blob"; then
  echo "root.d: fetched $(sha256sum < "$TARGET_ROOT/fetched" | cut -c1-64)"
else
  echo "root.d: fetch failed after $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
echo 'nameserver 192.0.2.53' > "$TARGET_ROOT/etc/resolv.conf"
"#;

const INSTALL_D: &str = r#"#!/bin/bash
echo "install.d: resolv.conf=$(cat /etc/resolv.conf)"
# (Only where root.d reached the server: the chroot has no `timeout` to bound a connect.)
if [ -e /fetched ] && exec 3<>/dev/tcp/10.0.2.2/$FETCH_PORT; then
  printf 'GET /blob HTTP/1.0\r\n\r\n' >&3
  echo "install.d: $(head -1 <&3 | tr -d '\r')"
fi
"#;

/// A build of the `fetcher` element with an HTTP server beside it (where microdib runs, so on
/// the emulated KVM host when nested), serving 3 MB of noise; returns it with the noise's sum.
fn fetcher(vm: BuildVm, options: &[&str]) -> (FixtureBuild, String) {
    let build = FixtureBuild::new(&["fixture-os", "fetcher"]).on(vm);
    let www = build.path("www");
    std::fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    tool("sh", &["-c", "head -c 3000000 /dev/urandom > \"$0\"", blob.to_str().unwrap()]);
    let sum = tool("sha256sum", &[blob.to_str().unwrap()]).split(' ').next().unwrap().to_owned();
    // A free port here; in a fresh emulated machine any port is.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let server = format!("exec python3 -m http.server --bind 127.0.0.1 --directory '{}' {port}", www.display());
    let build = build
        .element(
            "fetcher",
            &[
                ("root.d/50-fetch", ROOT_D),
                ("install.d/50-fetch", INSTALL_D),
                ("finalise.d/50-show", "#!/bin/bash\necho \"finalise.d: resolv.conf=$(cat /etc/resolv.conf)\"\n"),
                ("finalise.d/90-maybe-fail", "#!/bin/bash\n[ -n \"$FAIL\" ] && exit 3; true\n"),
            ],
        )
        .alongside(&server)
        .env("FETCH_PORT", &port)
        .options(&["--formats", "tar", "--debug", "1", "--envvar", "FETCH_PORT", "--envvar", "FAIL"])
        .options(&["--envvar", "FETCH_MAX_TIME"])
        .options(options);
    (build, sum)
}

/// On qemu: the default network, where the host's loopback is out of reach (passt's
/// `--no-map-gw`) while the network is up, and the build fails at its very end (finalise.d), so
/// passt must go with a failed build. On our VMM: `--network-host-loopback`, the fetches reach
/// the host's server through its network device, the build succeeds and the image keeps its
/// own resolv.conf. Both VMs stop the same way whichever way the build ends, and the
/// resolv.conf swap is the engine's.
fn network_build(vm: BuildVm) {
    let opened = vm == BuildVm::OurKvm;
    let (build, sum) = fetcher(vm, if opened { &["--network-host-loopback"] } else { &[] });
    let build = build.env("FAIL", if opened { "" } else { "1" });
    let net = build.env("FETCH_MAX_TIME", if opened { "60" } else { "3" }).run();
    net.said("root.d: DIB_OFFLINE=[]")
        .said("install.d: resolv.conf=nameserver 10.0.2.3")
        .said("finalise.d: resolv.conf=nameserver 10.0.2.3");
    assert_eq!(net.passt_pids().len(), 1, "no passt in the build");
    assert_eq!(net.processes_left(), Vec::<String>::new(), "passt outlived the build");
    if !opened {
        assert!(net.line_after("root.d: fetch failed after ").is_some(), "root.d reached the host's loopback");
        assert!(!net.stdout.contains("install.d: HTTP/1.0 200"), "the chroot reached the host's loopback");
        assert_eq!(net.status, 1, "{}{}", net.stdout, net.stderr);
        return;
    }
    net.said(&format!("root.d: fetched {sum}")).said("install.d: HTTP/1.0 200 OK");
    net.succeeded();
    let tar = net.output("img.tar");
    assert_eq!(tool("tar", &["-xOf", tar.to_str().unwrap(), "./etc/resolv.conf"]), "nameserver 192.0.2.53\n");
}

#[test]
fn without_the_network_a_build_is_offline() {
    let offline = fetcher(BuildVm::Auto, &["--no-network"]).0.run();
    offline.succeeded().said("root.d: DIB_OFFLINE=[1]").said("finalise.d: resolv.conf=nameserver 192.0.2.53");
    let ms: u64 = offline
        .line_after("root.d: fetch failed after ")
        .and_then(|l| l.strip_suffix(" ms")?.parse().ok())
        .expect("the fetch did not fail without the network");
    assert!(ms < 5000, "failing without a network took {ms} ms");
    assert!(!offline.stderr.contains("passt") && !offline.stdout.contains("passt"), "passt ran with --no-network");
    assert!(!offline.stdout.contains("install.d: HTTP/1.0 200"), "the chroot reached the host with --no-network");
}
