//! The appliance's network, as the host tells the agent on the kernel command line
//! (`microdib.net=ADDR/PREFIX,GATEWAY,DNS,MTU`): the addresses microdib gave passt, so the
//! guest needs no DHCP client and is configured before the agent says it is ready.

use std::fmt;
use std::net::Ipv4Addr;

/// Kernel command line key carrying a [`GuestNetwork`].
pub const CMDLINE_KEY: &str = "microdib.net";

/// Addresses of the guest's one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNetwork {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route; passt maps this address to the host's loopback.
    pub gateway: Ipv4Addr,
    /// passt forwards DNS queries sent here to the host's resolver.
    pub dns: Ipv4Addr,
    pub mtu: u16,
}

impl GuestNetwork {
    /// The slirp-style defaults qemu users know: 10.0.2.15/24, gateway .2, DNS .3. The MTU is
    /// passt's largest, so bulk downloads cost few frames.
    pub const DEFAULT: GuestNetwork = GuestNetwork {
        address: Ipv4Addr::new(10, 0, 2, 15),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        dns: Ipv4Addr::new(10, 0, 2, 3),
        mtu: 65520,
    };

    /// The netmask of `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
    }

    /// The `key=value` word for the kernel command line.
    pub fn cmdline_word(&self) -> String {
        format!("{CMDLINE_KEY}={self}")
    }

    /// Finds and parses our word in a kernel command line: None if absent, Err if malformed.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<GuestNetwork, String>> {
        let prefix = format!("{CMDLINE_KEY}=");
        cmdline.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).map(GuestNetwork::parse)
    }

    /// Parses `ADDR/PREFIX,GATEWAY,DNS,MTU`.
    pub fn parse(s: &str) -> Result<GuestNetwork, String> {
        let bad = || format!("bad {CMDLINE_KEY} value '{s}' (want ADDR/PREFIX,GATEWAY,DNS,MTU)");
        let parts: Vec<&str> = s.split(',').collect();
        let [cidr, gateway, dns, mtu] = parts.as_slice() else { return Err(bad()) };
        let (address, prefix_len) = cidr.split_once('/').ok_or_else(bad)?;
        let prefix_len: u8 = prefix_len.parse().map_err(|_| bad())?;
        if prefix_len == 0 || prefix_len > 30 {
            return Err(bad());
        }
        Ok(GuestNetwork {
            address: address.parse().map_err(|_| bad())?,
            prefix_len,
            gateway: gateway.parse().map_err(|_| bad())?,
            dns: dns.parse().map_err(|_| bad())?,
            mtu: mtu.parse().ok().filter(|m| *m >= 576).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for GuestNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{},{},{},{}", self.address, self.prefix_len, self.gateway, self.dns, self.mtu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_command_line() {
        let n = GuestNetwork::DEFAULT;
        let cmdline = format!("console=ttyS0 {} quiet", n.cmdline_word());
        assert_eq!(GuestNetwork::from_cmdline(&cmdline), Some(Ok(n)));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(GuestNetwork::from_cmdline("console=ttyS0 quiet"), None);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "10.0.2.15",
            "10.0.2.15/24,10.0.2.2,10.0.2.3",
            "10.0.2.15/0,1.1.1.1,1.1.1.1,1500",
            "10.0.2.15/33,1.1.1.1,1.1.1.1,1500",
            "x/24,1.1.1.1,1.1.1.1,1500",
            "10.0.2.15/24,1.1.1.1,1.1.1.1,100",
            "10.0.2.15/24,1.1.1.1,1.1.1.1,1500,9",
        ] {
            assert!(GuestNetwork::parse(bad).is_err(), "{bad}");
        }
    }
}
