//! CPUID as the guest sees it: KVM's supported set, patched per vCPU with its APIC ID, the
//! topology of `N` single-thread cores in one package, and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_POWER: u32 = 0x6;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_EPB: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_SVM: u32 = 1 << 2;
const CLFLUSH_LINE_QWORDS: u32 = 8;

/// Bits needed to number `n` things (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// What the patches need to know about one vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    pub id: u8,
    pub count: u8,
    pub tsc_deadline: bool,
}

/// Patches `entries` (KVM_GET_SUPPORTED_CPUID output) in place for one vCPU.
pub fn patch(entries: &mut [kvm_cpuid_entry2], t: VcpuTopology) {
    let id = u32::from(t.id);
    let count = u32::from(t.count).max(1);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0xff) | (CLFLUSH_LINE_QWORDS << 8) | (count.min(255) << 16) | (id << 24);
                e.ecx |= ECX_HYPERVISOR;
                // No nested virtualization: element scripts never need it, and a guest kernel
                // with KVM built in spends ~0.2 s initialising it.
                e.ecx &= !ECX_VMX;
                if t.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | ((count - 1).min(0x3f) << 26);
            }
            LEAF_POWER => e.ecx &= !ECX_EPB,
            LEAF_EXT_FEATURES => e.ecx &= !ECX_SVM,
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX[15:12]: APIC ID bits per package; ECX[7:0]: cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(count).max(1) << 12) | (count - 1).min(0xff);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = id;
                e.ebx = id & 0xff; // one thread per core, core id = vCPU id
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax: 0xffff_ffff, ebx: 0xffff_ffff, ecx: 0, edx: 0, ..Default::default() }
    }

    #[test]
    fn per_vcpu_identity_and_topology() {
        let mut e = vec![
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(6, 0),
            leaf(0x8000_001e, 0),
            leaf(0x8000_0001, 0),
        ];
        e[4].ecx = 0xf;
        e[0].ecx = ECX_VMX;
        e[6].ecx = ECX_SVM | 1;
        patch(&mut e, VcpuTopology { id: 3, count: 4, tsc_deadline: true });
        assert_eq!(e[0].ebx >> 24, 3, "initial APIC id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 4, "logical processor count");
        assert_eq!((e[0].ebx >> 8) & 0xff, 8, "clflush size");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].ecx >> 8, e[1].edx), (1, 1, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 4, 2));
        assert_eq!((e[3].ebx, e[3].ecx >> 8), (0, 0), "no level past cores");
        assert_eq!(e[4].ecx & ECX_EPB, 0);
        assert_eq!(e[5].eax, 3);
        assert_eq!(e[0].ecx & ECX_VMX, 0, "no VMX in the guest");
        assert_eq!(e[6].ecx, 1, "no SVM in the guest, other bits kept");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx = EDX_HTT;
        patch(&mut e, VcpuTopology { id: 0, count: 1, tsc_deadline: false });
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[0].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 64, 254].map(bits_for), [0, 1, 2, 2, 3, 6, 8]);
    }
}
