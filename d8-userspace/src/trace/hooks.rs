//! Which hook set a trace uses on this kernel, and everything the kernel programs must be told
//! about it (struct offsets from BTF, tracepoint layouts from tracefs, drop-reason names).

use d8_common::Config;

use super::Error;
use crate::{
    kernel::{self, DropReasons, btf::Btf, tracefs},
    loader,
};

/// The hook set asked for (`--hooks`, or an MCP call's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookRequest {
    /// Netfilter BPF links where the kernel has them (6.4+), else TC classifiers.
    #[default]
    Auto,
    Netfilter,
    Tc,
}

/// How the TC hook set joins a flow's pre- and post-DNAT views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Netfilter programs read the skb's conntrack entry (`nf_post`).
    SkbConntrack,
    /// Conntrack netlink NEW events in userspace fill `NAT_ALIAS` and the flow table.
    CtNetlink,
}

impl Join {
    pub fn describe(self) -> &'static str {
        match self {
            Self::SkbConntrack => "the skb's conntrack entry, read after DNAT by the netfilter programs",
            Self::CtNetlink => {
                "conntrack netlink NEW events (NFNLGRP_CONNTRACK_NEW) read in userspace fill NAT_ALIAS and join the views \
                 (a TC program cannot read the skb's conntrack entry before 6.3; the kprobe join is not in this build)"
            }
        }
    }
}

/// The hook set a trace uses, and why.
#[derive(Debug, Clone)]
pub struct HookChoice {
    pub set: loader::HookSet,
    pub join: Join,
    pub reason: String,
}

/// Picks the hook set: `requested`, or for `auto` netfilter links where the kernel has them
/// (`netfilter_links`), else TC.
pub fn choose_hooks(requested: HookRequest, netfilter_links: bool) -> Result<HookChoice, Error> {
    use HookRequest as Hooks;
    let tc = |reason: String| HookChoice {
        set: loader::HookSet::Tc,
        join: Join::CtNetlink,
        reason,
    };
    match requested {
        Hooks::Netfilter | Hooks::Auto if netfilter_links => Ok(HookChoice {
            set: loader::HookSet::Netfilter,
            join: Join::SkbConntrack,
            reason: if requested == Hooks::Auto {
                "auto: netfilter BPF links are available (exact pre/post-DNAT views from the skb's conntrack entry)"
                    .into()
            } else {
                "--hooks netfilter".into()
            },
        }),
        Hooks::Netfilter => Err(Error::NoNetfilterLinks {
            release: kernel::release(),
        }),
        Hooks::Tc => Ok(tc("--hooks tc".into())),
        Hooks::Auto => Ok(tc(format!(
            "auto: this kernel ({}) has no netfilter BPF links (6.4+, CONFIG_NETFILTER_BPF_LINK): TC classifiers on every interface",
            kernel::release()
        ))),
    }
}

/// Everything the kernel programs need to know about this kernel, plus drop-reason names.
pub struct KernelSetup {
    /// The hook set to attach, and why.
    pub choice: HookChoice,
    pub config: Config,
    pub drop_reasons: DropReasons,
    pub mount: tracefs::Mount,
    pub warnings: Vec<String>,
    /// The kernel programs' debug log is on (`--debug-kernel`).
    pub debug_kernel: bool,
}

/// Reads BTF and tracefs (mounting it if needed) and picks the hook set `scope` asks for.
pub fn kernel_setup(scope: &super::Scope) -> Result<KernelSetup, Error> {
    let requested = scope.hooks;
    let debug_kernel = scope.debug_kernel;
    if !kernel::is_root() {
        return Err(Error::NotRoot);
    }
    let btf = match Btf::from_sys() {
        Ok(btf) => btf,
        // Without BTF (CONFIG_DEBUG_INFO_BTF off) the TC programs still work: they read packets.
        // Only the drop tracepoint needs sk_buff's layout.
        Err(e) if requested != HookRequest::Netfilter => {
            let choice = choose_hooks(requested, false)?;
            let mut config = kernel::packet_only_config(None)?;
            let mount = tracefs::Mount::ensure()?;
            let mut warnings = kernel::tracepoint_layouts(&mount, &mut config)?;
            warnings.insert(0, format!("{}: tracing with the TC hook set without drops (the drop tracepoint needs sk_buff's layout from BTF)", crate::error_chain(&e)));
            return Ok(KernelSetup {
                choice,
                config,
                drop_reasons: DropReasons::default(),
                mount,
                warnings,
                debug_kernel,
            });
        }
        Err(e) => return Err(kernel::Error::from(e).into()),
    };
    let choice = choose_hooks(requested, btf.struct_size("bpf_nf_ctx").is_ok())?;
    let mut config = Config::default();
    let mut early_warnings = Vec::new();
    match kernel::struct_offsets(&btf, &mut config) {
        Ok(()) => {}
        // The TC programs read packets, not conntrack entries: without nf_conn's layout only the
        // drop tracepoint loses the entry's tuple (it then names flows by the packet's).
        Err(e) if choice.set == loader::HookSet::Tc => {
            config = kernel::packet_only_config(Some(&btf))?;
            early_warnings.push(format!(
                "conntrack struct offsets unavailable ({}): drops are matched to flows by the dropped packet's tuple, not its conntrack entry",
                crate::error_chain(&e)
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mount = tracefs::Mount::ensure()?;
    let mut warnings = kernel::tracepoint_layouts(&mount, &mut config)?;
    warnings.splice(0..0, early_warnings);
    Ok(KernelSetup {
        choice,
        config,
        drop_reasons: DropReasons::from_btf(&btf),
        mount,
        warnings,
        debug_kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_set_follows_the_request_and_the_kernel() {
        use HookRequest as Hooks;
        let auto_old = choose_hooks(Hooks::Auto, false).unwrap();
        assert_eq!((auto_old.set, auto_old.join), (loader::HookSet::Tc, Join::CtNetlink));
        assert!(
            auto_old.reason.contains("no netfilter BPF links"),
            "{}",
            auto_old.reason
        );
        let auto_new = choose_hooks(Hooks::Auto, true).unwrap();
        assert_eq!(
            (auto_new.set, auto_new.join),
            (loader::HookSet::Netfilter, Join::SkbConntrack)
        );
        assert_eq!(choose_hooks(Hooks::Tc, true).unwrap().set, loader::HookSet::Tc);
        let err = choose_hooks(Hooks::Netfilter, false).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("--hooks tc"), "{err}");
    }
}
