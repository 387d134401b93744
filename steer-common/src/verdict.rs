//! The fixed-verdict XDP programs of the `steer-verdicts` object
//! (`steer-ebpf/src/verdicts.rs`): what test and lab interfaces attach so
//! that frames sent to them are received (`pass`), bounced (`tx`) or
//! discarded (`drop`). Shared by the loader in steer-userspace and by xtask,
//! which drives the loader's command-line tool.

/// Which fixed verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    Pass,
    Tx,
    Drop,
}

impl XdpVerdict {
    pub const ALL: [XdpVerdict; 3] = [XdpVerdict::Pass, XdpVerdict::Tx, XdpVerdict::Drop];

    /// The program's name in the object, in `ip link` and in `bpftool prog`.
    pub const fn program(self) -> &'static str {
        match self {
            XdpVerdict::Pass => "steer_pass",
            XdpVerdict::Tx => "steer_tx",
            XdpVerdict::Drop => "steer_drop",
        }
    }

    /// The short name used on command lines: `pass`, `tx`, `drop`.
    pub const fn short(self) -> &'static str {
        match self {
            XdpVerdict::Pass => "pass",
            XdpVerdict::Tx => "tx",
            XdpVerdict::Drop => "drop",
        }
    }

    /// The XDP action the program returns (`XDP_PASS` = 2, ...).
    pub const fn action(self) -> u32 {
        match self {
            XdpVerdict::Pass => 2,
            XdpVerdict::Tx => 3,
            XdpVerdict::Drop => 1,
        }
    }

    /// Parses [`short`](Self::short).
    pub fn from_short(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.short() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::XdpVerdict;

    #[test]
    fn short_names_round_trip_and_actions_are_the_kernels() {
        for v in XdpVerdict::ALL {
            assert_eq!(XdpVerdict::from_short(v.short()), Some(v));
        }
        assert_eq!(XdpVerdict::from_short("PASS"), None);
        // include/uapi/linux/bpf.h: XDP_ABORTED 0, DROP 1, PASS 2, TX 3.
        assert_eq!(XdpVerdict::Drop.action(), 1);
        assert_eq!(XdpVerdict::Pass.action(), 2);
        assert_eq!(XdpVerdict::Tx.action(), 3);
    }
}
