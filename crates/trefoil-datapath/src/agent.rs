//! The node agent core: loads the classifier, keeps it attached to the
//! guarded interfaces, and reconciles the kernel's rule table to exactly the
//! entries it is given.
//!
//! Everything the kernel holds is pinned under one directory per node (maps,
//! the program, one TCX link per interface), so the datapath outlives the
//! agent: a restarted agent (even after `kill -9`) reopens the same maps,
//! swaps its freshly loaded program into the existing links without a gap,
//! and unpins links that should not be there. Only `remove_all` takes the
//! datapath down. Rule changes rewrite the idle half of the rule table and
//! flip one word; programs and links stay put, so flows a change does not
//! touch keep flowing.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::abi::{self, Config, Counter, Flow, FlowKey, Rule, MAX_RULES};
use crate::entry::Entry;
use crate::error::Error;
use crate::flows::{self, FlowRecord, RuleCounter};
use crate::table::{self, Ids};
use crate::{programs, routing, sys};

/// Where pins go unless configured otherwise: one directory per node below it.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/trefoil";
/// The most entries `Agent::apply` accepts (the kernel table's size).
pub const MAX_ENTRIES: u32 = MAX_RULES;

const LINK_PREFIX: &str = "link-ingress-";
const PROGRAM_PIN: &str = "prog";

/// Where the agent works and what it guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// The node's name; names the pin directory.
    pub node: String,
    /// Interfaces whose ingress traffic the rules apply to (where client and
    /// server traffic enters the node).
    pub interfaces: Vec<String>,
    /// A directory on a BPF filesystem; pins go in `<pin_root>/<node>`.
    pub pin_root: PathBuf,
    /// The network namespace to program (a path such as `/run/netns/edge`);
    /// `None` for the agent's own.
    pub netns: Option<PathBuf>,
}

impl AgentConfig {
    /// A node guarding `interfaces` in the agent's own network namespace.
    pub fn new(node: impl Into<String>, interfaces: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            node: node.into(),
            interfaces: interfaces.into_iter().map(Into::into).collect(),
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            netns: None,
        }
    }

    fn dir(&self) -> PathBuf {
        self.pin_root.join(&self.node)
    }
}

/// Runs `work` in the configured network namespace, on a thread of its own so
/// the caller's threads stay where they are.
pub(crate) fn in_netns<T: Send>(netns: Option<&Path>, work: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    let Some(path) = netns else { return work() };
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            sys::enter_netns(path)?;
            work()
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A running agent: the loaded classifier and the maps it shares with every
/// attached copy of it.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    dir: PathBuf,
    ebpf: Ebpf,
    state: Config,
    ids: Ids,
    /// Held while this agent lives: one agent per node.
    _lock: fs::File,
}

impl Agent {
    /// Loads the classifier, adopts what a previous agent of this node left
    /// pinned, and attaches to exactly the configured interfaces.
    pub fn start(config: AgentConfig) -> Result<Self, Error> {
        let object = programs::datapath()?;
        if let Some(capability) = sys::missing_capability() {
            return Err(Error::MissingCapability(capability));
        }
        check_kernel()?;
        if config.node.is_empty() || config.node.contains('/') || config.node.starts_with('.') {
            return Err(Error::io(
                format!("node name `{}`", config.node),
                io::Error::new(io::ErrorKind::InvalidInput, "must be non-empty, without `/`, not starting with `.`"),
            ));
        }
        ensure_bpffs(&config.pin_root)?;
        let dir = config.dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock = sys::lock_dir(&dir)?.ok_or_else(|| Error::NodeBusy(config.node.clone()))?;

        check_pinned_maps(&dir)?;
        let mut ebpf =
            EbpfLoader::new().default_map_pin_directory(&dir).load(object).map_err(|e| Error::bpf("loading the datapath programs", e))?;
        let program = classifier(&mut ebpf)?;
        program.load().map_err(|e| Error::bpf("verifying the classifier", e))?;
        let pin = dir.join(PROGRAM_PIN);
        remove_if_present(&pin)?;
        program.pin(&pin).map_err(|e| Error::bpf(format!("pinning the classifier at {}", pin.display()), e))?;

        let mut agent = Self { config, dir, ebpf, state: Config::default(), ids: Ids::default(), _lock: lock };
        agent.recover()?;
        let netns = agent.config.netns.clone();
        in_netns(netns.as_deref(), || {
            routing::install()?;
            agent.reconcile_links()
        })?;
        Ok(agent)
    }

    /// Rebuilds the rule-name slots from the live rule table a previous agent wrote.
    fn recover(&mut self) -> Result<(), Error> {
        let config: Array<_, u64> = Array::try_from(self.map(abi::CONFIG_MAP)?).map_err(|e| Error::bpf("opening the config map", e))?;
        self.state = Config::unpack(config.get(&0, 0).map_err(|e| Error::bpf("reading the config map", e))?);
        let rules: Array<_, Rule> = Array::try_from(self.map(abi::RULES_MAP)?).map_err(|e| Error::bpf("opening the rules map", e))?;
        let mut slots = std::collections::HashMap::new();
        for slot in self.state.base()..self.state.base() + u32::from(self.state.count) {
            let rule = rules.get(&slot, 0).map_err(|e| Error::bpf("reading the rules map", e))?;
            slots.insert(rule.name_hash, rule.id);
        }
        self.ids.slots = slots;
        Ok(())
    }

    /// Makes the pinned links match the configured interfaces. Runs in the
    /// agent's namespace, where interface names mean something.
    fn reconcile_links(&mut self) -> Result<(), Error> {
        let wanted: BTreeSet<String> = self.config.interfaces.iter().cloned().collect();
        for (interface, path) in pinned_links(&self.dir)? {
            if !wanted.contains(&interface) || sys::ifindex(&interface).is_err() {
                tracing::info!(%interface, "detaching the classifier from an interface it should not guard");
                unpin_link(&path)?;
            }
        }
        let dir = self.dir.clone();
        let program = classifier(&mut self.ebpf)?;
        for interface in &wanted {
            let path = dir.join(format!("{LINK_PREFIX}{interface}"));
            let replaced = match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| Error::bpf("adopting a pinned link", e))?;
                    match program.attach_to_link(link) {
                        Ok(id) => {
                            // Pinned already; dropping our descriptor leaves it attached.
                            drop(program.take_link(id).map_err(|e| Error::bpf("taking a link", e))?);
                            true
                        }
                        Err(error) => {
                            // The interface went away under the link (or was recreated).
                            tracing::info!(%interface, %error, "replacing a defunct link");
                            remove_if_present(&path)?;
                            false
                        }
                    }
                }
                Err(LinkError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(Error::bpf(format!("opening {}", path.display()), error)),
            };
            if !replaced {
                let id = program
                    .attach_with_options(interface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .map_err(|e| Error::bpf(format!("attaching the classifier to {interface} ingress"), e))?;
                let link = program.take_link(id).map_err(|e| Error::bpf("taking a link", e))?;
                let link: FdLink = link.try_into().map_err(|e| Error::bpf("converting a TCX link", e))?;
                link.pin(&path).map_err(|e| Error::bpf(format!("pinning {}", path.display()), e))?;
            }
        }
        Ok(())
    }

    /// Reconciles the kernel's rule table to exactly `entries` (in precedence
    /// order, first match wins), atomically: a packet sees the old table or
    /// the new one. More than [`MAX_ENTRIES`] entries are refused.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<(), Error> {
        if entries.len() > MAX_RULES as usize {
            return Err(Error::TooManyEntries { count: entries.len(), max: MAX_RULES });
        }
        let (ids, fresh) = self.ids.assign(entries)?;
        let netns = self.config.netns.clone();
        let rules = in_netns(netns.as_deref(), || {
            entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    let slot = ids.slots[&table::name_hash(&entry.rule)];
                    table::kernel_rule(index, entry, slot, &|name| sys::ifindex(name))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;

        let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        let mut counters: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.map_mut(abi::COUNTERS_MAP)?).map_err(|e| Error::bpf("opening the counters map", e))?;
        for slot in fresh {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|e| Error::bpf("sizing per-CPU counters", e))?;
            counters.set(slot, zero, 0).map_err(|e| Error::bpf("zeroing a rule's counters", e))?;
        }

        let next = Config {
            count: u16::try_from(rules.len()).expect("at most MAX_RULES entries"),
            bank: self.state.bank ^ 1,
            generation: self.state.generation.wrapping_add(1),
        };
        let mut table: Array<_, Rule> =
            Array::try_from(self.map_mut(abi::RULES_MAP)?).map_err(|e| Error::bpf("opening the rules map", e))?;
        for (offset, rule) in (0u32..).zip(&rules) {
            table.set(next.base() + offset, rule, 0).map_err(|e| Error::bpf("writing a rule", e))?;
        }
        let mut config: Array<_, u64> =
            Array::try_from(self.map_mut(abi::CONFIG_MAP)?).map_err(|e| Error::bpf("opening the config map", e))?;
        config.set(0, next.pack(), 0).map_err(|e| Error::bpf("switching to the new rules", e))?;
        self.state = next;
        self.ids = ids;
        Ok(())
    }

    /// The flows the kernel recorded that matched a rule.
    pub fn flows(&self) -> Result<Vec<FlowRecord>, Error> {
        let table: BpfHashMap<_, FlowKey, Flow> =
            BpfHashMap::try_from(self.map(abi::FLOWS_MAP)?).map_err(|e| Error::bpf("opening the flow table", e))?;
        let clock = sys::MonotonicClock::now();
        let mut records = Vec::new();
        for item in table.iter() {
            // An LRU entry evicted mid-walk ends that step; skip it, keep the rest.
            let Ok((key, flow)) = item else { continue };
            if flow.rule_id == abi::NO_RULE {
                continue;
            }
            let rule = self.ids.names.get(&flow.name_hash).cloned();
            records.extend(flows::record(&key, &flow, rule, &clock));
        }
        Ok(records)
    }

    /// Packets and bytes per rule currently applied.
    pub fn counters(&self) -> Result<Vec<RuleCounter>, Error> {
        let counters: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.map(abi::COUNTERS_MAP)?).map_err(|e| Error::bpf("opening the counters map", e))?;
        let mut out = Vec::new();
        for (hash, name) in &self.ids.names {
            let slot = self.ids.slots[hash];
            let values = counters.get(&slot, 0).map_err(|e| Error::bpf("reading a rule's counters", e))?;
            let (packets, bytes) = values.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push(RuleCounter { rule: name.clone(), packets, bytes });
        }
        out.sort_by(|a, b| a.rule.cmp(&b.rule));
        Ok(out)
    }

    /// Where this node's classifier runs, as the kernel reports it.
    pub fn attachments(&self) -> Result<Vec<Attachment>, Error> {
        attached(&self.config)
    }

    /// Detaches everything this node attached and removes its pins and its
    /// policy route: the kernel is left as it was before the first start.
    pub fn remove_all(self) -> Result<(), Error> {
        // The lock stays held (in `self`) until everything is gone.
        remove_pinned(&self.config)
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, Error> {
        self.ebpf.map(name).ok_or_else(|| missing_from_object(name))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_from_object(name))
    }
}

/// One classifier attached to one interface's ingress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// The interface, in the agent's namespace.
    pub interface: String,
    /// The kernel's id of the attached program.
    pub program_id: u32,
}

/// The interfaces of `config` whose ingress runs a Trefoil classifier, asked
/// of the kernel (not read from the pins), so it also sees what a crashed or
/// foreign agent left.
pub fn attached(config: &AgentConfig) -> Result<Vec<Attachment>, Error> {
    let interfaces = config.interfaces.clone();
    in_netns(config.netns.as_deref(), || {
        let mut out = Vec::new();
        for interface in interfaces {
            if sys::ifindex(&interface).is_err() {
                continue;
            }
            let (_, programs) = SchedClassifier::query_tcx(&interface, TcAttachType::Ingress)
                .map_err(|e| Error::bpf(format!("listing the programs on {interface} ingress"), e))?;
            for info in programs {
                if info.name_as_str() == Some(abi::PROGRAM) {
                    out.push(Attachment { interface: interface.clone(), program_id: info.id() });
                }
            }
        }
        out.sort();
        Ok(out)
    })
}

/// Removes what an agent of this node left in the kernel, without starting
/// one (for cleaning up after an agent that will not come back). Refused
/// while an agent runs the node.
pub fn remove_node(config: &AgentConfig) -> Result<(), Error> {
    let dir = config.dir();
    let _lock = if dir.exists() { Some(sys::lock_dir(&dir)?.ok_or_else(|| Error::NodeBusy(config.node.clone()))?) } else { None };
    remove_pinned(config)
}

fn remove_pinned(config: &AgentConfig) -> Result<(), Error> {
    in_netns(config.netns.as_deref(), routing::remove)?;
    let dir = config.dir();
    if !dir.exists() {
        return Ok(());
    }
    for (_, path) in pinned_links(&dir)? {
        unpin_link(&path)?;
    }
    remove_if_present(&dir.join(PROGRAM_PIN))?;
    for map in abi::MAPS {
        remove_if_present(&dir.join(map))?;
    }
    fs::remove_dir(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, Error> {
    let program = ebpf.program_mut(abi::PROGRAM).ok_or_else(|| missing_from_object(abi::PROGRAM))?;
    program.try_into().map_err(|e| Error::bpf("the classifier's program type", e))
}

fn missing_from_object(name: &str) -> Error {
    Error::io("reading the datapath object", io::Error::new(io::ErrorKind::NotFound, format!("`{name}` is not in it")))
}

fn pinned_links(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))? {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if let Some(interface) = item.file_name().to_str().and_then(|name| name.strip_prefix(LINK_PREFIX)) {
            out.push((interface.to_owned(), item.path()));
        }
    }
    Ok(out)
}

/// Unpinning drops the last reference to the link, which detaches it.
fn unpin_link(path: &Path) -> Result<(), Error> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => drop(pinned.unpin().map_err(|e| Error::io(format!("unpinning {}", path.display()), e))?),
        Err(LinkError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::bpf(format!("opening {}", path.display()), error)),
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(format!("removing {}", path.display()), e)),
        _ => Ok(()),
    }
}

/// Refuses pinned maps of another layout: aya would adopt them as they are,
/// and the new program would read rules and flows with the wrong shape.
fn check_pinned_maps(dir: &Path) -> Result<(), Error> {
    for name in abi::MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| Error::bpf(format!("reading {}", path.display()), e))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        let expected = abi::map_shape(name).expect("every map in MAPS has a shape");
        if found != expected {
            return Err(Error::IncompatiblePin { map: path, found, expected });
        }
    }
    Ok(())
}

/// TCX links (6.6) carry the classifier; bpf_loop (5.17) and socket
/// assignment (5.7) are older.
fn check_kernel() -> Result<(), Error> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| Error::io("reading the kernel release", e))?;
    let release = release.trim();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (6, 6) {
        return Err(Error::KernelTooOld { found: release.to_owned(), needed: "6.6", why: "TCX links attach the classifier" });
    }
    Ok(())
}

/// Makes sure `root` is on a BPF filesystem, mounting one at /sys/fs/bpf
/// when nothing is mounted there yet (as systemd does on most distributions).
fn ensure_bpffs(root: &Path) -> Result<(), Error> {
    let system = Path::new("/sys/fs/bpf");
    if root.starts_with(system) && !sys::is_bpffs(system) {
        sys::mount_bpffs(system)?;
    }
    fs::create_dir_all(root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    if !sys::is_bpffs(root) {
        return Err(Error::NotBpffs(root.to_owned()));
    }
    Ok(())
}
