//! `/proc/cmdline` -> typed [`Config`].
//!
//! Pure: the kernel command line is split the way the kernel itself splits it
//! (`lib/cmdline.c: next_arg`), then every parameter we know is checked. A bad
//! value never stops parsing: it becomes a [`Problem`] that names the parameter
//! and says what is accepted, and the documented default is used instead. Only
//! problems where no safe default exists are `fatal`.

use crate::devspec::DeviceSpec;
use crate::fstype::FsType;
use crate::verity::RootHash;

/// Default real init inside the new root.
pub const DEFAULT_INIT: &str = "/sbin/init";
/// Default number of boots without `mark-good` before a failsafe boot.
pub const DEFAULT_MAXTRIES: u32 = 3;

/// How long to wait for the devices named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootWait {
    /// No `rootwait`: wait up to `ovl.timeout` (or the built-in default).
    #[default]
    Default,
    /// `rootwait`: wait without limit.
    Forever,
    /// `rootwait=SECS`.
    Secs(u32),
}

/// Where the overlay's changes live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpperSpec {
    #[default]
    Tmpfs,
    Device(DeviceSpec),
    /// A persistence file: an ext4 image file at this absolute path on the
    /// `root=` filesystem that holds `ovl.image=` (see `boot::live`).
    File(String),
    /// Flash: JFFS2 on an MTD partition or UBIFS on a UBI volume (`mtd:NAME`,
    /// `ubi0:NAME`, `ubi:NAME`; see `boot::flash`).
    Flash(crate::upperparams::FlashSpec),
}

/// One `ovl.lower=` entry: a block device, or an image file on the `root=` filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerSpec {
    Device(DeviceSpec),
    File(String),
}

/// The size of a tmpfs upper, as the `size=` tmpfs option takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpfsSize {
    Bytes(u64),
    Percent(u8),
}

impl TmpfsSize {
    /// The value for tmpfs's `size=` mount option.
    pub fn mount_option(self) -> String {
        match self {
            TmpfsSize::Bytes(b) => format!("size={b}"),
            TmpfsSize::Percent(p) => format!("size={p}%"),
        }
    }
}

/// How the initramfs's kernel modules are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModuleLoading {
    /// Parallel with more than one CPU, else sequential (what measured fastest).
    #[default]
    Auto,
    /// One after another, in dependency order.
    Sequential,
    /// Independent modules on worker threads at once.
    Parallel,
}

impl ModuleLoading {
    /// Whether to load in parallel on a machine with `cpus` usable CPUs.
    pub fn parallel_with(self, cpus: u32) -> bool {
        match self {
            ModuleLoading::Auto => cpus > 1,
            ModuleLoading::Sequential => false,
            ModuleLoading::Parallel => true,
        }
    }
}

/// What happens when the boot cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    Shell,
    Reboot,
    Halt,
}

/// Everything the command line says about the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub root: Option<DeviceSpec>,
    /// `None`: detect from the superblock.
    pub rootfstype: Option<FsType>,
    pub rootflags: Option<String>,
    pub rootwait: RootWait,
    pub rootdelay: Option<u32>,
    /// The real init (initramfs mode: `init=`; router mode: `ovl.init=`).
    pub init: String,
    /// `ovl.init=` as given (router mode, where the kernel's `init=` names overlay-init).
    pub ovl_init: Option<String>,
    /// `init=` as given.
    pub kernel_init: Option<String>,
    pub upper: UpperSpec,
    pub upperfstype: Option<FsType>,
    /// `ovl.format=`: whether a blank upper device is formatted on first boot.
    pub format: crate::upperparams::FormatPolicy,
    /// `ovl.upperlabel=`: the label a first-boot format gives the upper.
    pub upperlabel: String,
    /// `ovl.ubiattach=`: the MTD partition to attach to UBI for a UBIFS upper.
    pub ubiattach: Option<crate::upperparams::UbiAttach>,
    pub size: Option<TmpfsSize>,
    pub image: Option<String>,
    /// `ovl.upper_create=SIZE`: create a missing persistence file of this size.
    pub upper_create: Option<u64>,
    /// `ovl.toram`: copy the `ovl.image=` file into RAM before mounting it.
    pub toram: bool,
    pub lowers: Vec<LowerSpec>,
    /// `ovl.lower=SPEC@ROOTHASH`: the root hash of each `lowers` entry, if verified.
    pub lower_hashes: Vec<Option<RootHash>>,
    /// `ovl.verity*` as given, and combined (`None`: the main lower is not verified).
    pub verity_params: crate::verity::Params,
    pub verity: Option<crate::verity::VerityConfig>,
    pub reset: bool,
    pub failsafe: bool,
    pub failsafe_wait: u32,
    pub maxtries: u32,
    pub timeout: Option<u32>,
    /// `None`: the default (a shell if the initramfs has one, else reboot).
    pub onfail: Option<OnFail>,
    pub modules: ModuleLoading,
    pub debug: bool,
    /// `ovl.upgrade=`: what a boot does when the lower changed.
    pub upgrade: crate::upgrade::Policy,
    /// Arguments after `--`, for the real init.
    pub init_args: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: None,
            rootfstype: None,
            rootflags: None,
            rootwait: RootWait::Default,
            rootdelay: None,
            init: DEFAULT_INIT.to_string(),
            ovl_init: None,
            kernel_init: None,
            upper: UpperSpec::Tmpfs,
            upperfstype: None,
            format: crate::upperparams::FormatPolicy::Blank,
            upperlabel: crate::upperparams::DEFAULT_UPPER_LABEL.to_string(),
            ubiattach: None,
            size: None,
            image: None,
            upper_create: None,
            toram: false,
            lowers: Vec::new(),
            lower_hashes: Vec::new(),
            verity_params: Default::default(),
            verity: None,
            reset: false,
            failsafe: false,
            failsafe_wait: 0,
            maxtries: DEFAULT_MAXTRIES,
            timeout: None,
            onfail: None,
            modules: ModuleLoading::Auto,
            debug: false,
            upgrade: crate::upgrade::Policy::Keep,
            init_args: Vec::new(),
        }
    }
}

/// A parameter that could not be used as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The parameter name as written (`ovl.size`).
    pub param: String,
    /// What was wrong and what is accepted.
    pub message: String,
    /// No safe default: boot must take the failure path.
    pub fatal: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

/// The result of parsing: a config (defaults where values were bad) and the problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub config: Config,
    pub problems: Vec<Problem>,
}

impl Parsed {
    pub fn has_fatal(&self) -> bool {
        self.problems.iter().any(|p| p.fatal)
    }
}

/// One command-line word: `name` or `name=value`, quotes removed as the kernel does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

/// Split a command line like the kernel's `next_arg`: words are separated by
/// whitespace outside double quotes; one pair of quotes around the whole word
/// or around the value after `=` is removed. Returns the words before `--`
/// and the words after it.
pub fn split(cmdline: &str) -> (Vec<Param<'_>>, Vec<Param<'_>>) {
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut seen_dashes = false;
    let mut rest = cmdline;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let (param, tail) = next_arg(rest);
        rest = tail;
        if !seen_dashes && param.name == "--" && param.value.is_none() {
            seen_dashes = true;
            continue;
        }
        if seen_dashes {
            after.push(param);
        } else {
            before.push(param);
        }
    }
    (before, after)
}

/// One word from the front of `args` (which starts with a non-space).
fn next_arg(args: &str) -> (Param<'_>, &str) {
    let bytes = args.as_bytes();
    let mut in_quote = false;
    let mut equals = None;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_whitespace() && !in_quote {
            end = i;
            break;
        }
        if equals.is_none() && b == b'=' {
            equals = Some(i);
        }
        if b == b'"' {
            in_quote = !in_quote;
        }
    }
    let word = &args[..end];
    let rest = &args[end..];
    let param = match equals {
        Some(eq) => {
            let name = word[..eq].trim_start_matches('"');
            let mut value = &word[eq + 1..];
            if let Some(v) = value.strip_prefix('"') {
                value = v.strip_suffix('"').unwrap_or(v);
            }
            Param {
                name,
                value: Some(value),
            }
        }
        None => {
            let name = match word.strip_prefix('"') {
                Some(w) => w.strip_suffix('"').unwrap_or(w),
                None => word,
            };
            Param { name, value: None }
        }
    };
    (param, rest)
}

/// A parser for one `ovl.*` parameter: sets its field of the config from the
/// value, or reports what is wrong through the collector.
pub type OvlParser = fn(&mut Config, Option<&str>, &mut Problems<'_>);

/// Every `ovl.*` parameter: its name (after `-` -> `_` normalisation) and its
/// parser. Adding a parameter is one line here, one parser function below, and
/// one row in the README's table (a unit test checks that the two agree).
pub const OVL_PARAMS: &[(&str, OvlParser)] = &[
    ("upper", ovl_upper),
    ("upperfstype", ovl_upperfstype),
    ("format", ovl_format),
    ("upperlabel", ovl_upperlabel),
    ("ubiattach", ovl_ubiattach),
    ("size", ovl_size),
    ("image", ovl_image),
    ("upper_create", ovl_upper_create),
    ("toram", ovl_toram),
    ("lower", ovl_lower),
    ("reset", |c, v, p| p.flag(v, &mut c.reset)),
    ("failsafe", |c, v, p| p.flag(v, &mut c.failsafe)),
    ("failsafe_wait", ovl_failsafe_wait),
    ("maxtries", ovl_maxtries),
    ("timeout", ovl_timeout),
    ("onfail", ovl_onfail),
    ("modules", ovl_modules),
    ("debug", |c, v, p| p.flag(v, &mut c.debug)),
    ("init", ovl_init),
    ("upgrade", ovl_upgrade),
    ("verity", crate::verity::ovl_verity),
    ("verity_hash", crate::verity::ovl_verity_hash),
    ("verity_hashoffset", crate::verity::ovl_verity_hashoffset),
    ("verity_onerror", crate::verity::ovl_verity_onerror),
];

/// The problems collector for one parameter as written (`raw`).
pub struct Problems<'a> {
    list: &'a mut Vec<Problem>,
    param: &'a str,
}

impl Problems<'_> {
    /// A bad value with a safe default: reported, the boot goes on.
    pub fn warn(&mut self, message: impl Into<String>) {
        problem(self.list, self.param, false, message.into());
    }
    /// A bad value without a safe default: the boot takes the failure path.
    pub fn fatal(&mut self, message: impl Into<String>) {
        problem(self.list, self.param, true, message.into());
    }
    /// A flag: bare, or `=1`/`=0` and the like.
    fn flag(&mut self, value: Option<&str>, field: &mut bool) {
        set_flag(self.list, self.param, value, field);
    }
}

/// Parse a whole kernel command line.
pub fn parse(cmdline: &str) -> Parsed {
    let (before, after) = split(cmdline);
    let mut config = Config::default();
    let mut problems = Vec::new();
    for param in &before {
        apply(&mut config, &mut problems, param);
    }
    config.init_args = after.iter().map(param_to_arg).collect();
    check_conflicts(&mut config, &mut problems);
    Parsed { config, problems }
}

/// How the kernel hands an argument after `--` to init: `name` or `name=value`.
fn param_to_arg(p: &Param<'_>) -> String {
    match p.value {
        Some(v) => format!("{}={}", p.name, v),
        None => p.name.to_string(),
    }
}

fn problem(problems: &mut Vec<Problem>, param: &str, fatal: bool, message: String) {
    problems.push(Problem {
        param: param.to_string(),
        message,
        fatal,
    });
}

fn apply(config: &mut Config, problems: &mut Vec<Problem>, param: &Param<'_>) {
    let raw = param.name;
    let value = param.value;
    match raw {
        "root" => match value.filter(|v| !v.is_empty()) {
            None => problem(problems, raw, true, "needs a device".into()),
            Some(v) => match DeviceSpec::parse(v) {
                Ok(spec) => config.root = Some(spec),
                Err(e) => problem(problems, raw, true, e),
            },
        },
        "rootfstype" => config.rootfstype = parse_fstype(problems, raw, value),
        "rootflags" => config.rootflags = value.filter(|v| !v.is_empty()).map(str::to_string),
        "rootwait" => match value.map(parse_secs) {
            None => config.rootwait = RootWait::Forever,
            Some(Ok(s)) => config.rootwait = RootWait::Secs(s),
            Some(Err(e)) => {
                // A garbled value still asks to wait: waiting is the safe reading.
                config.rootwait = RootWait::Forever;
                problem(problems, raw, false, format!("{e}; waiting without limit"));
            }
        },
        "rootdelay" => match value.map(parse_secs) {
            Some(Ok(s)) => config.rootdelay = Some(s),
            Some(Err(e)) => problem(problems, raw, false, format!("{e}; ignored")),
            None => problem(problems, raw, false, "needs seconds; ignored".into()),
        },
        "init" => match value {
            Some(v) if v.starts_with('/') => config.kernel_init = Some(v.to_string()),
            _ => problem(
                problems,
                raw,
                true,
                "needs an absolute path such as /sbin/init".into(),
            ),
        },
        _ => {
            if let Some(name) = raw.strip_prefix("ovl.") {
                apply_ovl(config, problems, raw, &name.replace('-', "_"), value);
            }
            // Anything else belongs to the kernel or to the real init.
        }
    }
}

fn apply_ovl(
    config: &mut Config,
    problems: &mut Vec<Problem>,
    raw: &str,
    name: &str,
    value: Option<&str>,
) {
    let mut report = Problems {
        list: problems,
        param: raw,
    };
    match OVL_PARAMS.iter().find(|(known, _)| *known == name) {
        Some((_, parse)) => parse(config, value, &mut report),
        None => {
            let names: Vec<&str> = OVL_PARAMS.iter().map(|(name, _)| *name).collect();
            report.warn(format!(
                "unknown parameter; ignored. Accepted: ovl.{}",
                names.join(", ovl.")
            ));
        }
    }
}

fn ovl_upper(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    use crate::live::UpperTarget;
    match value.and_then(crate::upperparams::parse_flash_upper) {
        Some(Ok(spec)) => return config.upper = UpperSpec::Flash(spec),
        Some(Err(e)) => return p.warn(format!("{e}; using a tmpfs upper, nothing persists")),
        None => {}
    }
    match value.map(crate::live::parse_upper) {
        Some(Ok(UpperTarget::Tmpfs)) => config.upper = UpperSpec::Tmpfs,
        Some(Ok(UpperTarget::Device(spec))) => config.upper = UpperSpec::Device(spec),
        Some(Ok(UpperTarget::File(path))) => config.upper = UpperSpec::File(path),
        Some(Err(e)) => p.warn(format!(
            "{}; using a tmpfs upper, nothing persists",
            e.message
        )),
        None => p.warn("needs tmpfs, a device or a persistence file path; using a tmpfs upper"),
    }
}

fn ovl_upper_create(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.map(crate::live::parse_upper_create) {
        Some(Ok(bytes)) => config.upper_create = Some(bytes),
        Some(Err(e)) => p.warn(format!("{}; no persistence file is created", e.message)),
        None => p.warn("needs a size such as 256M; no persistence file is created"),
    }
}

fn ovl_toram(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::live::parse_toram(value) {
        Ok(on) => config.toram = on,
        Err(e) => p.warn(format!("{}; the image is read from the medium", e.message)),
    }
}

fn ovl_upperfstype(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::upperparams::parse_upper_fstype(value) {
        Ok(t) => config.upperfstype = t,
        Err(e) => {
            p.warn(format!("{e}; detecting from the superblock"));
            config.upperfstype = None;
        }
    }
}

fn ovl_format(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::upperparams::parse_format(value) {
        Ok(policy) => config.format = policy,
        // The safe reading of a garbled value: write nothing.
        Err(e) => {
            p.warn(format!("{e}; using never (a blank upper is not formatted)"));
            config.format = crate::upperparams::FormatPolicy::Never;
        }
    }
}

fn ovl_upperlabel(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::upperparams::parse_upper_label(value) {
        Ok(label) => config.upperlabel = label,
        Err(e) => p.warn(format!(
            "{e}; using the default label {}",
            crate::upperparams::DEFAULT_UPPER_LABEL
        )),
    }
}

fn ovl_ubiattach(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::upperparams::parse_ubiattach(value) {
        Ok(which) => config.ubiattach = Some(which),
        Err(e) => p.warn(format!("{e}; nothing is attached")),
    }
}

fn ovl_size(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.map(parse_size) {
        Some(Ok(s)) => config.size = Some(s),
        Some(Err(e)) => p.warn(format!("{e}; using the tmpfs default (half of RAM)")),
        None => p.warn("needs a size such as 64M or 50%"),
    }
}

fn ovl_image(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value {
        Some(v) if v.starts_with('/') && !v.ends_with('/') => config.image = Some(v.to_string()),
        _ => p.fatal("needs the absolute path of an image file on the root= filesystem"),
    }
}

fn ovl_lower(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.filter(|v| !v.is_empty()) {
        None => p.fatal("needs SPEC[,SPEC]: devices or image-file paths"),
        Some(v) => {
            for entry in v.split(',') {
                match crate::verity::parse_lower_entry(entry)
                    .and_then(|(spec, hash)| Ok((parse_lower(spec)?, hash)))
                {
                    Ok((l, hash)) => {
                        config.lowers.push(l);
                        config.lower_hashes.push(hash);
                    }
                    Err(e) => p.fatal(e),
                }
            }
        }
    }
}

fn ovl_failsafe_wait(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.map(parse_secs) {
        Some(Ok(s)) => config.failsafe_wait = s,
        Some(Err(e)) => p.warn(format!("{e}; no failsafe window")),
        None => p.warn("needs seconds; no failsafe window"),
    }
}

fn ovl_maxtries(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.map(parse_secs) {
        Some(Ok(n)) => config.maxtries = n,
        Some(Err(e)) => p.warn(format!("{e} (0 = off); using {DEFAULT_MAXTRIES}")),
        None => p.warn("needs a number (0 = off)"),
    }
}

fn ovl_upgrade(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match crate::upgrade::parse_policy(value) {
        Ok(policy) => config.upgrade = policy,
        Err(_) => p.warn("accepted: keep, prune, reset; using the default (keep)"),
    }
}

fn ovl_timeout(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value.map(parse_secs) {
        Some(Ok(s)) => config.timeout = Some(s),
        Some(Err(e)) => p.warn(format!("{e}; using the default")),
        None => p.warn("needs seconds; using the default"),
    }
}

fn ovl_onfail(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value {
        Some("shell") => config.onfail = Some(OnFail::Shell),
        Some("reboot") => config.onfail = Some(OnFail::Reboot),
        Some("halt") => config.onfail = Some(OnFail::Halt),
        _ => p.warn(
            "accepted: shell, reboot, halt; using the default (shell if present, else reboot)",
        ),
    }
}

fn ovl_modules(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value {
        Some("auto") => config.modules = ModuleLoading::Auto,
        Some("sequential") => config.modules = ModuleLoading::Sequential,
        Some("parallel") => config.modules = ModuleLoading::Parallel,
        _ => p.warn(
            "accepted: auto, sequential, parallel; using the default (auto: parallel with more than one CPU)",
        ),
    }
}

fn ovl_init(config: &mut Config, value: Option<&str>, p: &mut Problems<'_>) {
    match value {
        Some(v) if v.starts_with('/') => config.ovl_init = Some(v.to_string()),
        _ => p.fatal("needs an absolute path such as /sbin/init"),
    }
}

fn parse_lower(entry: &str) -> Result<LowerSpec, String> {
    if entry.starts_with('/') && !entry.starts_with("/dev/") {
        if entry.ends_with('/') {
            return Err(format!("{entry:?}: an image file path cannot end in /"));
        }
        return Ok(LowerSpec::File(entry.to_string()));
    }
    DeviceSpec::parse(entry)
        .map(LowerSpec::Device)
        .map_err(|e| format!("{e}, or an image file path"))
}

fn set_flag(problems: &mut Vec<Problem>, raw: &str, value: Option<&str>, flag: &mut bool) {
    match value {
        None | Some("1") | Some("y") | Some("yes") | Some("true") | Some("on") => *flag = true,
        Some("0") | Some("n") | Some("no") | Some("false") | Some("off") => *flag = false,
        Some(v) => problem(
            problems,
            raw,
            false,
            format!("{v:?} is not a flag value; accepted: no value, 1/0, yes/no, true/false, on/off; ignored"),
        ),
    }
}

fn parse_fstype(problems: &mut Vec<Problem>, raw: &str, value: Option<&str>) -> Option<FsType> {
    match value {
        None | Some("") | Some("auto") => None,
        Some(v) => match FsType::parse(v) {
            Some(t) => Some(t),
            None => {
                problem(
                    problems,
                    raw,
                    false,
                    format!("{v:?} is not supported; accepted: squashfs, erofs, ext4, auto; detecting from the superblock"),
                );
                None
            }
        },
    }
}

/// Whole seconds, `0..=86400*365`.
pub fn parse_secs(v: &str) -> Result<u32, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a whole number of seconds"));
    }
    v.parse::<u32>()
        .map_err(|_| format!("{v:?} is too large"))
        .and_then(|n| {
            if n > 86400 * 365 {
                Err(format!("{v:?} is too large"))
            } else {
                Ok(n)
            }
        })
}

/// `64M`, `1G`, `512k`, `1048576` (bytes) or `50%` (of RAM, 1..=100).
pub fn parse_size(v: &str) -> Result<TmpfsSize, String> {
    let accepted = "accepted: bytes, or a number with k, M or G, or 1%..100%";
    if let Some(p) = v.strip_suffix('%') {
        return match p.parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) && p.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(TmpfsSize::Percent(n))
            }
            _ => Err(format!("{v:?} is not a percentage; {accepted}")),
        };
    }
    let (digits, shift) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a size; {accepted}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{v:?} is too large; {accepted}"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{v:?} is too large; {accepted}"))?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{v:?} is below 1M, too small for an upper; {accepted}"
        ));
    }
    Ok(TmpfsSize::Bytes(bytes))
}

/// Settings that each parse fine but do not go together.
fn check_conflicts(config: &mut Config, problems: &mut Vec<Problem>) {
    if config.failsafe && config.reset {
        problem(
            problems,
            "ovl.reset",
            false,
            "ignored with ovl.failsafe: a failsafe boot never resets anything".into(),
        );
        config.reset = false;
    }
    if config.upper_create.is_some() && !matches!(config.upper, UpperSpec::File(_)) {
        problem(
            problems,
            "ovl.upper_create",
            false,
            "only applies to a persistence file (ovl.upper=/PATH); ignored".into(),
        );
        config.upper_create = None;
    }
    if config.toram && config.image.is_none() {
        problem(
            problems,
            "ovl.toram",
            false,
            "only applies to an image file (ovl.image=PATH); ignored".into(),
        );
        config.toram = false;
    }
    if config.size.is_some() && matches!(config.upper, UpperSpec::Device(_) | UpperSpec::Flash(_)) {
        problem(
            problems,
            "ovl.size",
            false,
            "only applies to a tmpfs upper; ignored with a device upper".into(),
        );
    }
    if config.upperfstype.is_some() && config.upper == UpperSpec::Tmpfs {
        problem(
            problems,
            "ovl.upperfstype",
            false,
            "only applies to a device upper; ignored with ovl.upper=tmpfs".into(),
        );
        config.upperfstype = None;
    }
    if let (Some(t), UpperSpec::Flash(spec)) = (config.upperfstype, &config.upper) {
        problem(
            problems,
            "ovl.upperfstype",
            false,
            format!(
                "ovl.upperfstype={t} does not apply to ovl.upper={spec}, which holds {}; ignored",
                spec.fstype()
            ),
        );
        config.upperfstype = None;
    }
    let ubi_upper = matches!(
        &config.upper,
        UpperSpec::Flash(crate::upperparams::FlashSpec::UbiVolume { .. })
    );
    if config.ubiattach.is_some() && !ubi_upper {
        problem(
            problems,
            "ovl.ubiattach",
            false,
            "only applies to a UBIFS upper (ovl.upper=ubi:NAME or ubiN:NAME); ignored".into(),
        );
        config.ubiattach = None;
    }
    let format_as = crate::upperparams::format_fstype(config.upperfstype);
    if let Err(e) = crate::upperparams::label_fits(&config.upperlabel, format_as) {
        problem(
            problems,
            "ovl.upperlabel",
            false,
            format!(
                "{e}; using the default label {}",
                crate::upperparams::DEFAULT_UPPER_LABEL
            ),
        );
        config.upperlabel = crate::upperparams::DEFAULT_UPPER_LABEL.to_string();
    }
    if config.image.is_some() && config.root.is_none() {
        problem(
            problems,
            "ovl.image",
            true,
            "needs root= to name the filesystem that holds the image".into(),
        );
    }
    if let Err(e) = crate::verity::resolve(config) {
        problem(problems, "ovl.verity", true, e);
    }
    if let Some(init) = &config.kernel_init {
        config.init = init.clone();
    }
    if let Some(init) = &config.ovl_init {
        config.init = init.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ovl_parameter_is_in_the_readme_table_and_back() {
        // The README's parameter table rows start with "| `ovl.NAME".
        let mut documented: Vec<String> = include_str!("../README.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `ovl."))
            .map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        documented.sort();
        let mut table: Vec<String> = OVL_PARAMS.iter().map(|(n, _)| n.to_string()).collect();
        table.sort();
        assert_eq!(
            table, documented,
            "OVL_PARAMS and README.md's ovl.* rows differ"
        );
    }

    fn ok(cmdline: &str) -> Config {
        let parsed = parse(cmdline);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.config
    }

    fn problems(cmdline: &str) -> Vec<Problem> {
        parse(cmdline).problems
    }

    #[test]
    fn splits_like_the_kernel() {
        let (before, after) = split(r#"  a b=c  init="/sbin/init --foo" "x y" -- p q=r "s t""#);
        let words: Vec<_> = before.iter().map(|p| (p.name, p.value)).collect();
        assert_eq!(
            words,
            vec![
                ("a", None),
                ("b", Some("c")),
                ("init", Some("/sbin/init --foo")),
                ("x y", None),
            ]
        );
        let args: Vec<_> = after.iter().map(param_to_arg).collect();
        assert_eq!(args, vec!["p", "q=r", "s t"]);
    }

    #[test]
    fn quoted_value_with_equals_inside() {
        let (before, _) = split(r#"ovl.lower="LABEL=a b""#);
        assert_eq!(before[0].name, "ovl.lower");
        assert_eq!(before[0].value, Some("LABEL=a b"));
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let (before, _) = split(r#"a="b c"#);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].value, Some("b c"));
    }

    #[test]
    fn only_first_dashes_separate() {
        let c = ok("root=/dev/vda -- a -- b");
        assert_eq!(c.init_args, vec!["a", "--", "b"]);
    }

    #[test]
    fn defaults() {
        let c = ok("");
        assert_eq!(c, Config::default());
        assert_eq!(c.init, "/sbin/init");
        assert_eq!(c.upper, UpperSpec::Tmpfs);
        assert_eq!(c.maxtries, 3);
    }

    #[test]
    fn every_standard_parameter() {
        let c = ok("root=LABEL=rom rootfstype=erofs rootflags=noatime rootwait rootdelay=2 init=/bin/sh quiet console=ttyS0");
        assert_eq!(c.root, Some(DeviceSpec::Label("rom".into())));
        assert_eq!(c.rootfstype, Some(FsType::Erofs));
        assert_eq!(c.rootflags.as_deref(), Some("noatime"));
        assert_eq!(c.rootwait, RootWait::Forever);
        assert_eq!(c.rootdelay, Some(2));
        assert_eq!(c.init, "/bin/sh");
        assert_eq!(ok("rootwait=7").rootwait, RootWait::Secs(7));
        assert_eq!(ok("rootfstype=auto").rootfstype, None);
        assert_eq!(ok("rootfstype=ext3").rootfstype, Some(FsType::Ext4));
    }

    #[test]
    fn every_ovl_parameter() {
        let c = ok("root=/dev/vda ovl.upper=PARTLABEL=data ovl.upperfstype=ext4 ovl.image=/img/root.sqsh \
             ovl.lower=/dev/vdc,LABEL=extra,/images/b.erofs ovl.reset ovl.timeout=9 ovl.onfail=halt \
             ovl.debug ovl.failsafe_wait=3 ovl.maxtries=5 ovl.init=/sbin/procd");
        assert_eq!(
            c.upper,
            UpperSpec::Device(DeviceSpec::PartLabel("data".into()))
        );
        assert_eq!(c.upperfstype, Some(FsType::Ext4));
        assert_eq!(c.image.as_deref(), Some("/img/root.sqsh"));
        assert_eq!(
            c.lowers,
            vec![
                LowerSpec::Device(DeviceSpec::Path("/dev/vdc".into())),
                LowerSpec::Device(DeviceSpec::Label("extra".into())),
                LowerSpec::File("/images/b.erofs".into()),
            ]
        );
        assert!(c.reset && c.debug && !c.failsafe);
        assert_eq!(c.timeout, Some(9));
        assert_eq!(c.onfail, Some(OnFail::Halt));
        assert_eq!(c.failsafe_wait, 3);
        assert_eq!(c.maxtries, 5);
        assert_eq!(c.init, "/sbin/procd");
        assert_eq!(c.ovl_init.as_deref(), Some("/sbin/procd"));
        assert!(ok("ovl.failsafe").failsafe);
        assert_eq!(ok("ovl.modules=parallel").modules, ModuleLoading::Parallel);
        assert_eq!(ok("").modules, ModuleLoading::Auto);
        assert!(ModuleLoading::Auto.parallel_with(2) && !ModuleLoading::Auto.parallel_with(1));
        assert!(!ModuleLoading::Sequential.parallel_with(4));
        assert!(ModuleLoading::Parallel.parallel_with(1));
        assert_eq!(
            ok("ovl.modules=sequential").modules,
            ModuleLoading::Sequential
        );
        assert_eq!(problems("ovl.modules=fast")[0].param, "ovl.modules");
        assert_eq!(ok("ovl.size=64M").size, Some(TmpfsSize::Bytes(64 << 20)));
        assert_eq!(ok("ovl.size=50%").size, Some(TmpfsSize::Percent(50)));
        assert_eq!(ok("ovl.upper=tmpfs").upper, UpperSpec::Tmpfs);
        assert_eq!(ok("ovl.onfail=shell").onfail, Some(OnFail::Shell));
        assert_eq!(ok("ovl.onfail=reboot").onfail, Some(OnFail::Reboot));
    }

    #[test]
    fn verity_parameters() {
        let hash = "4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076";
        let c = ok(&format!(
            "root=/dev/vda ovl.verity={hash} ovl.verity_hash=PARTLABEL=hash ovl.verity_onerror=restart \
             ovl.lower=/dev/vdc@{hash},/img/a.sqsh"
        ));
        let v = c.verity.unwrap();
        assert_eq!(v.root_hash.to_string(), hash);
        assert_eq!(v.hash_device, Some(DeviceSpec::PartLabel("hash".into())));
        assert_eq!(v.on_error, crate::verity::OnError::Restart);
        assert_eq!(
            c.lowers[0],
            LowerSpec::Device(DeviceSpec::Path("/dev/vdc".into()))
        );
        assert_eq!(c.lower_hashes.len(), 2);
        assert_eq!(c.lower_hashes[0].as_ref().unwrap().to_string(), hash);
        assert_eq!(c.lower_hashes[1], None);
        let c = ok(&format!(
            "root=/dev/vda ovl.verity-hashoffset=4096 ovl.verity={hash}"
        ));
        assert_eq!(c.verity.unwrap().hash_offset, 4096);
        assert_eq!(ok("root=/dev/vda").verity, None);
        // Asking for verification and getting it wrong never boots unverified.
        for bad in [
            "ovl.verity=xyz ovl.verity_hashoffset=4096",
            "ovl.verity_hash=/dev/vdb",
            &format!("ovl.verity={hash}"),
            &format!("ovl.verity={hash} ovl.verity_hashoffset=1000"),
            "ovl.lower=/dev/vdc@nothex",
        ] {
            let parsed = parse(&format!("root=/dev/vda {bad}"));
            assert!(parsed.has_fatal(), "{bad}: {:?}", parsed.problems);
            assert!(parsed.problems[0].param.starts_with("ovl."), "{bad}");
        }
        let parsed = parse(&format!(
            "root=/dev/vda ovl.verity={hash} ovl.verity_hashoffset=4096 ovl.verity_onerror=reboot"
        ));
        assert!(!parsed.has_fatal());
        assert_eq!(parsed.problems[0].param, "ovl.verity_onerror");
        assert_eq!(
            parsed.config.verity.unwrap().on_error,
            crate::verity::OnError::Eio
        );
    }

    #[test]
    fn dashes_and_underscores_are_one() {
        assert_eq!(ok("ovl.failsafe-wait=4").failsafe_wait, 4);
    }

    #[test]
    fn flags_take_explicit_values() {
        assert!(!ok("ovl.reset=0").reset);
        assert!(ok("ovl.reset=yes").reset);
        let p = problems("ovl.reset=maybe");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].param, "ovl.reset");
        assert!(!p[0].fatal);
    }

    #[test]
    fn init_args_after_dashes() {
        let c = ok(r#"root=/dev/vda init=/sbin/test-init -- "echo hi; ls /" single"#);
        assert_eq!(c.init, "/sbin/test-init");
        assert_eq!(c.init_args, vec!["echo hi; ls /", "single"]);
    }

    #[test]
    fn ovl_init_wins_over_init_in_router_mode() {
        let c = ok("init=/sbin/overlay-init ovl.init=/sbin/procd");
        assert_eq!(c.kernel_init.as_deref(), Some("/sbin/overlay-init"));
        assert_eq!(c.init, "/sbin/procd");
    }

    #[test]
    fn bad_values_name_the_parameter_and_fall_back() {
        let parsed = parse(
            "root=/dev/vda ovl.size=lots ovl.timeout=-1 ovl.onfail=explode ovl.bogus=1 \
             rootfstype=xfs ovl.maxtries=x ovl.upper=sda rootdelay=soon ovl.failsafe_wait=1.5",
        );
        let names: Vec<_> = parsed.problems.iter().map(|p| p.param.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "ovl.size",
                "ovl.timeout",
                "ovl.onfail",
                "ovl.bogus",
                "rootfstype",
                "ovl.maxtries",
                "ovl.upper",
                "rootdelay",
                "ovl.failsafe_wait",
            ]
        );
        assert!(!parsed.has_fatal(), "{:?}", parsed.problems);
        let c = parsed.config;
        assert_eq!(c.size, None);
        assert_eq!(c.timeout, None);
        assert_eq!(c.onfail, None);
        assert_eq!(c.rootfstype, None);
        assert_eq!(c.maxtries, DEFAULT_MAXTRIES);
        assert_eq!(c.upper, UpperSpec::Tmpfs);
        let bogus = &parsed.problems[3];
        assert!(bogus.message.contains("ovl.upper"), "{}", bogus.message);
        let onfail = &parsed.problems[2];
        assert!(onfail.message.contains("shell, reboot, halt"));
    }

    #[test]
    fn fatal_problems() {
        for bad in [
            "root=",
            "root=sda1",
            "root=UUID=nothex",
            "init=sbin/init",
            "ovl.image=relative.sqsh",
            "ovl.lower=bogus",
            "ovl.lower=",
            "ovl.init=",
            "ovl.image=/x.img",
        ] {
            let parsed = parse(bad);
            assert!(parsed.has_fatal(), "{bad}: {:?}", parsed.problems);
        }
    }

    #[test]
    fn conflicts() {
        let parsed = parse("ovl.failsafe ovl.reset");
        assert!(!parsed.config.reset);
        assert_eq!(parsed.problems[0].param, "ovl.reset");
        let parsed = parse("ovl.upper=/dev/vdb ovl.size=64M");
        assert_eq!(parsed.problems[0].param, "ovl.size");
        let parsed = parse("ovl.upperfstype=ext4");
        assert_eq!(parsed.problems[0].param, "ovl.upperfstype");
        let parsed = parse("ovl.upper=/dev/vdb ovl.upperfstype=squashfs");
        assert_eq!(parsed.problems[0].param, "ovl.upperfstype");
        assert!(parsed.problems[0].message.contains("f2fs"));
    }

    #[test]
    fn first_boot_format_parameters() {
        use crate::upperparams::FormatPolicy;
        let c = Config::default();
        assert_eq!(
            (c.format, c.upperlabel.as_str()),
            (FormatPolicy::Blank, "overlay")
        );
        let c = ok("ovl.upper=/dev/vdb ovl.upperfstype=f2fs ovl.format=never ovl.upperlabel=data");
        assert_eq!(c.upperfstype, Some(FsType::F2fs));
        assert_eq!(
            (c.format, c.upperlabel.as_str()),
            (FormatPolicy::Never, "data")
        );
        // A garbled ovl.format= writes nothing; a bad label keeps the default.
        let parsed = parse("ovl.upper=/dev/vdb ovl.format=yes ovl.upperlabel=a/b");
        assert_eq!(parsed.config.format, FormatPolicy::Never);
        assert_eq!(parsed.config.upperlabel, "overlay");
        assert_eq!(parsed.problems.len(), 2);
        // The length limit depends on the fstype, in either order.
        let long = "x".repeat(20);
        let parsed = parse(&format!("ovl.upperlabel={long} ovl.upper=/dev/vdb"));
        assert_eq!(parsed.problems[0].param, "ovl.upperlabel");
        let parsed = parse(&format!(
            "ovl.upperlabel={long} ovl.upper=/dev/vdb ovl.upperfstype=f2fs"
        ));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.config.upperlabel, long);
    }

    #[test]
    fn flash_uppers_and_ubiattach() {
        use crate::upperparams::{FlashSpec, UbiAttach};
        let c = ok("ovl.upper=mtd:rootfs_data");
        assert_eq!(
            c.upper,
            UpperSpec::Flash(FlashSpec::Mtd {
                name: "rootfs_data".into()
            })
        );
        let c = ok("ovl.ubiattach=mtd:ubi ovl.upper=ubi:rootfs_data");
        assert_eq!(c.ubiattach, Some(UbiAttach::Name("ubi".into())));
        assert_eq!(
            c.upper,
            UpperSpec::Flash(FlashSpec::UbiVolume {
                device: None,
                name: "rootfs_data".into()
            })
        );
        // A malformed flash spec is a tmpfs upper, said so.
        let parsed = parse("ovl.upper=ubi0:");
        assert_eq!(parsed.config.upper, UpperSpec::Tmpfs);
        assert!(
            parsed.problems[0].message.contains("tmpfs"),
            "{:?}",
            parsed.problems
        );
        // ovl.ubiattach= without a UBIFS upper, ovl.upperfstype= and ovl.size= with a flash
        // upper: ignored, said so.
        let parsed =
            parse("ovl.upper=mtd:data ovl.ubiattach=mtd3 ovl.upperfstype=ext4 ovl.size=10M");
        let params: Vec<&str> = parsed.problems.iter().map(|p| p.param.as_str()).collect();
        assert_eq!(params, ["ovl.size", "ovl.upperfstype", "ovl.ubiattach"]);
        assert_eq!(parsed.config.ubiattach, None);
        assert_eq!(parsed.config.upperfstype, None);
        assert!(!parsed.has_fatal());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(TmpfsSize::Bytes(1 << 30)));
        assert_eq!(parse_size("2048k"), Ok(TmpfsSize::Bytes(2 << 20)));
        assert_eq!(parse_size("1048576"), Ok(TmpfsSize::Bytes(1 << 20)));
        assert_eq!(parse_size("100%"), Ok(TmpfsSize::Percent(100)));
        for bad in [
            "",
            "M",
            "0%",
            "101%",
            "-5M",
            "5T",
            "1.5G",
            "12",
            "99999999999999999G",
            "+5%",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(TmpfsSize::Percent(50).mount_option(), "size=50%");
    }

    #[test]
    fn secs() {
        assert_eq!(parse_secs("0"), Ok(0));
        for bad in ["", "-1", "1.5", "1s", "99999999999"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rootwait_garbage_still_waits() {
        let parsed = parse("rootwait=soon");
        assert_eq!(parsed.config.rootwait, RootWait::Forever);
        assert_eq!(parsed.problems[0].param, "rootwait");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "\"",
            "=",
            "==",
            "\"=\"",
            "a=\"",
            "--",
            "-- --",
            "ovl.",
            "ovl.=",
            "\u{0}",
            "ovl.lower=,,",
        ] {
            let _ = parse(s);
        }
    }

    #[test]
    fn live_parameters() {
        let c = ok(
            "root=LABEL=LIVEUSB ovl.image=/live/root.sqsh ovl.upper=/live/persist.img \
             ovl.upper_create=1G ovl.toram",
        );
        assert_eq!(c.upper, UpperSpec::File("/live/persist.img".into()));
        assert_eq!(c.upper_create, Some(1 << 30));
        assert!(c.toram);
        assert!(!ok("root=/dev/sr0 ovl.image=/a ovl.toram=off").toram);
        // A device is still a device, /dev paths included.
        assert!(matches!(
            ok("ovl.upper=/dev/vdb").upper,
            UpperSpec::Device(_)
        ));

        for (cmdline, param, says) in [
            ("ovl.upper=/live/../x.img", "ovl.upper", "no //, . or .."),
            ("ovl.upper=/live/", "ovl.upper", "cannot end in /"),
            (
                "ovl.upper_create=1M ovl.upper=/p.img",
                "ovl.upper_create",
                "too small",
            ),
            (
                "ovl.upper_create=64M",
                "ovl.upper_create",
                "only applies to a persistence file",
            ),
            ("ovl.upper_create", "ovl.upper_create", "needs a size"),
            (
                "root=/dev/vda ovl.toram",
                "ovl.toram",
                "only applies to an image file",
            ),
            (
                "root=/dev/vda ovl.image=/a ovl.toram=maybe",
                "ovl.toram",
                "not a flag value",
            ),
        ] {
            let parsed = parse(cmdline);
            assert_eq!(parsed.problems.len(), 1, "{cmdline}: {:?}", parsed.problems);
            let problem = &parsed.problems[0];
            assert_eq!(problem.param, param, "{cmdline}");
            assert!(!problem.fatal, "{cmdline}");
            assert!(
                problem.message.contains(says),
                "{cmdline}: {}",
                problem.message
            );
        }
        // A bad persistence path leaves a tmpfs upper; a bad size creates nothing.
        assert_eq!(parse("ovl.upper=/a/./b").config.upper, UpperSpec::Tmpfs);
        assert_eq!(
            parse("ovl.upper=/p ovl.upper_create=x").config.upper_create,
            None
        );
    }
}
