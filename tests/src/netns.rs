//! Hosts on a real (virtual) network for tests: each host is a Linux network namespace
//! with one veth link to a bridge that lives in a namespace of its own (the "switch"), on
//! a private subnet. Nothing touches the machine's own network: the bridge and every link
//! exist only inside the test's namespaces, and all of them are deleted when the [`Net`]
//! is dropped (also when the test fails).
//!
//! Processes run on a host via `ip netns exec`; code of the test itself runs on a host
//! with [`Host::run`] (a thread that entered the host's namespace, with its own
//! single-threaded runtime, so every socket it opens is that host's).
//!
//! Faults: a host's link down (a partition: packets vanish, nothing is reset),
//! `tc netem` delay/loss/reordering where the kernel has it, else a `tbf` bandwidth limit.

use anyhow::{anyhow, bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A host: its namespace, its address and its link's name on the switch.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    port: String,
    switch: String,
}

/// The switch and the hosts on it.
pub struct Net {
    switch: String,
    pub hosts: Vec<Host>,
}

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// Builds a switch and `names.len()` hosts, `10.213.0.1`, `.2`, ... in that order.
    /// Err with the reason when this machine cannot (not root, no iproute2, no netns):
    /// callers skip with that message.
    pub fn new(names: &[&str]) -> Result<Net> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root");
        }
        let tag = format!(
            "d{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}-sw");
        ip(&["netns", "add", &switch])?;
        let mut net = Net {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            ip(&["netns", "add", &ns])?;
            let host = Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip: format!("10.213.0.{}", i + 1),
                port: format!("p{}", i + 1),
                switch: switch.clone(),
            };
            net.hosts.push(host.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &host.port,
                "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &host.port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &host.port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it (both veth ends go with either).
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

impl Host {
    /// A command that runs `program` on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs `f` on this host: on a thread that entered the host's network namespace, with
    /// a single-threaded runtime (so every socket is opened from that thread).
    pub fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || -> Result<T> {
            let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow!("entering {path}: {e}"))?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(f())
        })
        .join()
        .map_err(|_| anyhow!("code run on host panicked"))?
    }

    /// Cuts the host off the network (its switch port down): a partition. Packets are
    /// dropped, connections are not reset.
    pub fn link_down(&self) -> Result<()> {
        ip(&["-n", &self.switch, "link", "set", &self.port, "down"])
    }

    pub fn link_up(&self) -> Result<()> {
        ip(&["-n", &self.switch, "link", "set", &self.port, "up"])
    }

    /// Delay, loss and reordering on the host's link with `tc netem`. Ok(false) if this
    /// kernel has no netem (CONFIG_NET_SCH_NETEM): nothing was changed.
    pub fn netem(
        &self,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u32,
        reorder_pct: u32,
    ) -> Result<bool> {
        let out = self
            .command("tc")
            .args(["qdisc", "replace", "dev", "eth0", "root", "netem", "delay"])
            .arg(format!("{delay_ms}ms"))
            .arg(format!("{jitter_ms}ms"))
            .args(["loss", &format!("{loss_pct}%")])
            .args(["reorder", &format!("{reorder_pct}%")])
            .output()
            .context("running tc")?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("qdisc kind is unknown") {
            return Ok(false);
        }
        bail!("tc netem on {}: {}", self.name, err.trim())
    }

    /// A bandwidth limit with a queue (token bucket filter): slow transfers and queueing
    /// delay; the fallback where netem is missing.
    pub fn throttle(&self, rate: &str, latency_ms: u32) -> Result<()> {
        let out = self
            .command("tc")
            .args([
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate,
            ])
            .args(["burst", "16kbit", "latency", &format!("{latency_ms}ms")])
            .output()
            .context("running tc")?;
        if !out.status.success() {
            bail!(
                "tc tbf on {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes any netem/tbf from the host's link.
    pub fn clear_qdisc(&self) -> Result<()> {
        let _ = self
            .command("tc")
            .args(["qdisc", "del", "dev", "eth0", "root"])
            .output();
        Ok(())
    }
}
