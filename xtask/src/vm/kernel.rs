//! Finding the guest kernel: a Debian cloud kernel package (downloaded once into the cache), a
//! bzImage given by path, or the host's running kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::run_cmd;

/// A bootable kernel and, when known, the modules that belong to it.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage handed to qemu's `-kernel`.
    pub image: PathBuf,
    /// `uname -r` inside the guest: the modules go to `/lib/modules/<release>/`.
    pub release: String,
    /// `.../lib/modules/<release>`, with `modules.dep` (depmod has run).
    pub modules: Option<PathBuf>,
    /// The kernel's build config, copied to `/boot/config-<release>` (bpftool's feature probe and
    /// d8-trace's doctor read it).
    pub config: Option<PathBuf>,
    /// Where it came from, for the log.
    pub origin: String,
}

/// Resolves `--kernel` (and `--modules`).
pub fn resolve(spec: &str, modules: Option<&Path>, cache: &Path) -> Result<Kernel> {
    if spec == "running" {
        return running(modules);
    }
    if is_series(spec) && !Path::new(spec).exists() {
        if modules.is_some() {
            bail!("--modules only goes with --kernel PATH: a Debian kernel brings its own modules");
        }
        return debian(spec, cache);
    }
    from_path(Path::new(spec), modules)
}

/// `6.1`, `6.12`, `5.10`: a Debian kernel series.
fn is_series(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn running(modules: Option<&Path>) -> Result<Kernel> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !image.is_file() {
        bail!(
            "--kernel running: the running kernel's image {} does not exist on this machine \
             (containers and some CI hosts boot a kernel that is not in /boot); use --kernel 6.1 \
             or --kernel PATH",
            image.display()
        );
    }
    let modules = match modules {
        Some(m) => Some(modules_dir(m, &release)?),
        None => {
            let m = PathBuf::from(format!("/lib/modules/{release}"));
            m.join("modules.dep").is_file().then_some(m)
        }
    };
    let config = PathBuf::from(format!("/boot/config-{release}"));
    Ok(Kernel {
        image,
        release,
        modules,
        config: config.is_file().then_some(config),
        origin: "the running kernel".into(),
    })
}

fn from_path(image: &Path, modules: Option<&Path>) -> Result<Kernel> {
    if !image.is_file() {
        bail!(
            "--kernel {}: not a file, and not `running` or a Debian series like 6.1",
            image.display()
        );
    }
    let header_release =
        bzimage_release(image).with_context(|| format!("{} does not look like an x86 bzImage", image.display()))?;
    let modules = modules.map(|m| modules_dir(m, &header_release)).transpose()?;
    // The modules directory's name is what the guest's `uname -r` must match for modprobe.
    let release = match &modules {
        Some(m) => m.file_name().unwrap().to_string_lossy().into_owned(),
        None => header_release.clone(),
    };
    if release != header_release {
        eprintln!("d8-vm: warning: the image says release {header_release} but the modules are for {release}");
    }
    Ok(Kernel {
        image: image.to_path_buf(),
        release,
        modules,
        config: None,
        origin: format!("{}", image.display()),
    })
}

/// Accepts `.../lib/modules/<release>` or a root that holds `lib/modules/<release>`.
fn modules_dir(dir: &Path, release: &str) -> Result<PathBuf> {
    let candidates = [dir.to_path_buf(), dir.join("lib/modules").join(release)];
    for c in candidates {
        if c.join("modules.dep").is_file() {
            return Ok(c);
        }
        if c.join("kernel").is_dir() {
            bail!(
                "{} has no modules.dep: run `depmod -b <root> {release}` first",
                c.display()
            );
        }
    }
    bail!(
        "--modules {}: expected lib/modules/<release> (with modules.dep) or a root containing lib/modules/{release}",
        dir.display()
    )
}

/// Reads the release string from a bzImage's setup header (boot protocol >= 2.00: `HdrS` at 0x202,
/// `kernel_version` at 0x20e is an offset from 0x200 to a NUL-terminated "6.1.0-56-cloud-amd64 (...)").
pub fn bzimage_release(image: &Path) -> Result<String> {
    let mut head = vec![0u8; 64 * 1024];
    let n = {
        use std::io::Read;
        let mut f = fs::File::open(image)?;
        let mut n = 0;
        while n < head.len() {
            let r = f.read(&mut head[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        n
    };
    head.truncate(n);
    if head.len() < 0x210 || &head[0x202..0x206] != b"HdrS" {
        bail!("no Linux boot header (HdrS)");
    }
    let off = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let s = head.get(off..).context("kernel_version offset beyond the header")?;
    let end = s.iter().position(|&b| b == 0 || b == b' ').unwrap_or(s.len());
    let release = String::from_utf8_lossy(&s[..end]).into_owned();
    if release.is_empty() {
        bail!("empty kernel_version string");
    }
    Ok(release)
}

/// The Debian suite whose cloud kernels make each series: `--kernel 5.10` is bullseye's,
/// `6.1` bookworm's, `6.12` trixie's (their point releases and security updates).
pub const SUITES: &[(&str, &str)] = &[("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];

/// Package lists older than this are refreshed (a new kernel ABI, `-NN`, appears every few weeks);
/// failing that, the old lists are used.
const LISTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A private apt for one Debian suite, under `<cache>/apt/<suite>/`: its own configuration file
/// (`$APT_CONFIG`), sources list (deb.debian.org, or `$D8_VM_DEBIAN_MIRROR`, signed by the Debian
/// archive keyring), package lists, caches and preferences, and a configuration directory holding
/// only the machine's proxy settings. The machine's own apt state (`/var/lib/apt/lists`, `/var/cache/apt`, its
/// sources and its update hooks) is never read or written: the host can be any Debian release, and
/// `apt-get update` here never changes what the machine would install.
struct Apt {
    root: PathBuf,
    suite: &'static str,
}

impl Apt {
    fn new(cache: &Path, suite: &'static str) -> Result<Self> {
        let root = cache.join("apt").join(suite);
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "etc/apt.conf.d",
            "etc/preferences.d",
        ] {
            fs::create_dir_all(root.join(sub)).with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).is_file() {
            bail!("{keyring} is missing: install the Debian package debian-archive-keyring");
        }
        let mirror = std::env::var("D8_VM_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let security = std::env::var("D8_VM_DEBIAN_SECURITY_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian-security".into());
        let sources = format!(
            "deb [signed-by={keyring}] {mirror} {suite} main\n\
             deb [signed-by={keyring}] {mirror} {suite}-updates main\n\
             deb [signed-by={keyring}] {security} {suite}-security main\n"
        );
        write_if_changed(&root.join("etc/sources.list"), &sources)?;
        // The machine's proxy, if it has one (nothing else of its configuration: its update hooks,
        // e.g. appstream's or packagekit's, would act on the machine's lists).
        let proxies = Command::new("apt-config")
            .arg("dump")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("Acquire::http::Proxy") || l.starts_with("Acquire::https::Proxy"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            })
            .unwrap_or_default();
        write_if_changed(&root.join("etc/apt.conf.d/proxy.conf"), &proxies)?;
        write_if_changed(&root.join("etc/apt.conf"), &Self::config(&root))?;
        Ok(Apt { root, suite })
    }

    /// `program` with this suite's configuration: `$APT_CONFIG` names `<root>/etc/apt.conf`, which
    /// apt reads before anything else, and which points every directory (configuration parts,
    /// sources, preferences, lists, caches) into `<root>`. (`-o Dir::Etc::Parts=...` would come too
    /// late: apt reads the machine's `/etc/apt/apt.conf.d` before the command line.)
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.root.join("etc/apt.conf"));
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn config(root: &Path) -> String {
        let r = |sub: &str| root.join(sub).display().to_string();
        [
            ("Dir::Etc::Parts", r("etc/apt.conf.d")),
            ("Dir::Etc::Main", r("etc/main.conf")),
            ("Dir::Etc::SourceList", r("etc/sources.list")),
            ("Dir::Etc::SourceParts", r("etc/sources.list.d")),
            ("Dir::Etc::Preferences", r("etc/preferences")),
            ("Dir::Etc::PreferencesParts", r("etc/preferences.d")),
            ("Dir::State::Lists", r("lists")),
            ("Dir::Cache", r("cache")),
            ("Acquire::Languages", "none".into()),
        ]
        .iter()
        .map(|(key, value)| format!("{key} \"{value}\";\n"))
        .collect()
    }

    fn update(&self) -> Result<()> {
        eprintln!(
            "d8-vm: apt-get update for {} (private lists in {})",
            self.suite,
            self.root.display()
        );
        run_cmd(self.command("apt-get").args(["-q", "update"]))
    }

    /// When the lists were last replaced (apt renames them into place, which also updates the
    /// directory's time); `None` before the first update.
    fn lists_time(&self) -> Option<std::time::SystemTime> {
        let dir = self.root.join("lists");
        let mut newest = None;
        for e in fs::read_dir(&dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("Release")
                && let Ok(m) = e.metadata().and_then(|m| m.modified())
            {
                newest = newest.max(Some(m));
            }
        }
        newest
    }

    /// A stamp that changes whenever the lists do.
    fn lists_stamp(&self) -> Option<String> {
        let d = self.lists_time()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The newest `linux-image-<series>.*-cloud-amd64-unsigned` package of the series' Debian suite
/// ([`SUITES`], asked through a private apt: [`Apt`]), downloaded and extracted once into
/// `<cache>/debian/<package>_<version>/`.
fn debian(series: &str, cache: &Path) -> Result<Kernel> {
    let Some(&(_, suite)) = SUITES.iter().find(|(s, _)| *s == series) else {
        bail!(
            "--kernel {series}: no Debian suite known for this series (known: {}); give a bzImage path instead",
            SUITES
                .iter()
                .map(|(s, d)| format!("{s} ({d})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let dir = cache.join("debian");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two runs at once (a developer and a test script) must not download into the same
    // directories; the lock is released when the file is closed, also if we die.
    let lock = fs::File::create(dir.join(".lock"))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "d8-vm: another vm-test is preparing a kernel in {}; waiting",
            dir.display()
        );
        lock.lock()?;
    }
    let apt = Apt::new(cache, suite)?;
    let stale = apt
        .lists_time()
        .is_none_or(|t| t.elapsed().is_ok_and(|age| age > LISTS_MAX_AGE));
    if stale {
        if let Err(e) = apt.update() {
            // Offline: a kernel extracted earlier is still good; old lists too.
            if let Some(k) = newest_cached(&dir, series)? {
                eprintln!("d8-vm: apt-get update failed ({e:#}); using the cached {}", k.origin);
                return Ok(k);
            }
            if apt.lists_time().is_none() {
                return Err(e);
            }
            eprintln!("d8-vm: apt-get update failed ({e:#}); using the {suite} lists of an earlier run");
        }
        return debian_once(series, &apt, cache, false);
    }
    debian_once(series, &apt, cache, true)
}

/// With `may_update`, a package apt does not know or cannot download (stale lists: Debian drops
/// superseded kernels from the mirror) leads to one `apt-get update` and a second attempt.
fn debian_once(series: &str, apt: &Apt, cache: &Path, may_update: bool) -> Result<Kernel> {
    let started = Instant::now();
    let dir = cache.join("debian");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // apt-cache takes a second or two per query, and its answer only changes when the package
    // lists do: remember it, keyed by the lists' modification time.
    let memo = dir.join(format!("newest-{series}"));
    let lists = apt.lists_stamp();
    if let (Some(stamp), Ok(text)) = (&lists, fs::read_to_string(&memo)) {
        let mut parts = text.split_whitespace();
        if parts.next() == Some(stamp.as_str())
            && let (Some(pkg), Some(version)) = (parts.next(), parts.next())
        {
            let key = format!("{pkg}_{}", version.replace(':', "%3a"));
            if let Some(k) = cached(&dir.join(key))? {
                eprintln!(
                    "d8-vm: kernel {} from cache ({:.2}s)",
                    k.release,
                    started.elapsed().as_secs_f64()
                );
                return Ok(k);
            }
        }
    }

    let candidates = match candidates(apt, series) {
        Ok(found) if !found.is_empty() => found,
        Ok(_) if may_update => {
            eprintln!(
                "d8-vm: no linux-image-{series}.*-cloud-amd64-unsigned in the {} lists; updating them",
                apt.suite
            );
            apt.update()?;
            return debian_once(series, apt, cache, false);
        }
        Ok(_) => bail!(
            "Debian {} has no package linux-image-{series}.*-cloud-amd64-unsigned, even after apt-get update \
             (lists in {})",
            apt.suite,
            apt.root.display()
        ),
        Err(e) => {
            // No apt (not a Debian host): a kernel extracted earlier is still good.
            if let Some(k) = newest_cached(&dir, series)? {
                eprintln!("d8-vm: apt not usable ({e:#}); using the cached {}", k.origin);
                return Ok(k);
            }
            return Err(e);
        }
    };

    // The newest that is cached or downloads: a mirror (or its security pool) can list a package
    // it does not serve (yet, or any more, or not to this network); then the next older ABI is
    // taken (each failed try takes about a second).
    let mut failures = Vec::new();
    let mut fetched = None;
    for (pkg, version) in &candidates {
        let key = format!("{pkg}_{}", version.replace(':', "%3a"));
        let entry = dir.join(&key);
        if let Some(k) = cached(&entry)? {
            if let Some(stamp) = apt.lists_stamp() {
                let _ = fs::write(&memo, format!("{stamp} {pkg} {version}\n"));
            }
            eprintln!(
                "d8-vm: kernel {} from cache ({:.2}s)",
                k.release,
                started.elapsed().as_secs_f64()
            );
            return Ok(k);
        }
        // Download (apt-get writes `<pkg>_<version>_amd64.deb` into its working directory).
        eprintln!("d8-vm: downloading {pkg} {version} from Debian {}", apt.suite);
        let dl = dir.join(format!("{key}.download"));
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl)?;
        match run_cmd(
            apt.command("apt-get")
                .current_dir(&dl)
                .args(["-q", "download"])
                .arg(format!("{pkg}={version}")),
        ) {
            Ok(()) => {
                fetched = Some((pkg.clone(), version.clone(), key, entry, dl));
                break;
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dl);
                let why = format!("{e:#}");
                let why = why.lines().find(|l| l.starts_with("E: ")).unwrap_or(&why);
                eprintln!("d8-vm: downloading {pkg} {version} failed: {why}");
                failures.push(format!("{pkg} {version}"));
            }
        }
    }
    let Some((pkg, version, key, entry, dl)) = fetched else {
        if may_update {
            eprintln!(
                "d8-vm: no download worked; updating the {} lists and trying again",
                apt.suite
            );
            apt.update()?;
            return debian_once(series, apt, cache, false);
        }
        bail!(
            "no kernel of the series {series} could be downloaded from Debian {} (tried {})",
            apt.suite,
            failures.join(", ")
        );
    };
    if let Some(stamp) = apt.lists_stamp() {
        let _ = fs::write(&memo, format!("{stamp} {pkg} {version}\n"));
    }
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dl.display()))?;

    // Extract into a temporary directory and rename at the end, so an interrupted run never leaves
    // a half-extracted kernel that looks complete.
    let tmp = dir.join(format!("{key}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.join("root")))?;
    // trixie's packages ship the modules in usr/lib/modules (merged /usr): the cache, depmod -b
    // and the initramfs take them from lib/modules.
    let usr_modules = tmp.join("root/usr/lib/modules");
    if usr_modules.is_dir() && !tmp.join("root/lib/modules").exists() {
        fs::create_dir_all(tmp.join("root/lib"))?;
        fs::rename(&usr_modules, tmp.join("root/lib/modules"))?;
    }
    let release = find_release(&tmp.join("root"))?;
    ensure_tool("depmod", "kmod")?;
    // The guest's modprobe needs modules.dep/modules.alias; depmod is fast on the host and slow
    // under emulation.
    run_cmd(Command::new("depmod").arg("-b").arg(tmp.join("root")).arg(&release))?;
    // Only the extracted tree is kept; the .deb itself would double the cache's size.
    fs::remove_dir_all(&dl)?;
    fs::write(tmp.join("release"), &release)?;
    let _ = fs::remove_dir_all(&entry);
    fs::rename(&tmp, &entry)?;

    // Older kernels of the same series are dead weight once a newer one is in place.
    for e in fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != key && name.starts_with(&format!("linux-image-{series}.")) {
            eprintln!("d8-vm: removing the superseded cached kernel {name}");
            let _ = fs::remove_dir_all(e.path());
        }
    }

    let k = cached(&entry)?.context("the kernel just extracted is incomplete")?;
    eprintln!(
        "d8-vm: kernel {} downloaded and prepared in {:.1}s",
        k.release,
        started.elapsed().as_secs_f64()
    );
    Ok(k)
}

/// A complete cache entry (`release` is written last, after depmod).
fn cached(entry: &Path) -> Result<Option<Kernel>> {
    let Ok(release) = fs::read_to_string(entry.join("release")) else {
        return Ok(None);
    };
    let release = release.trim().to_string();
    let root = entry.join("root");
    let image = root.join(format!("boot/vmlinuz-{release}"));
    let modules = root.join(format!("lib/modules/{release}"));
    if !image.is_file() || !modules.join("modules.dep").is_file() {
        return Ok(None);
    }
    let config = root.join(format!("boot/config-{release}"));
    Ok(Some(Kernel {
        image,
        release,
        modules: Some(modules),
        config: config.is_file().then_some(config),
        origin: format!("Debian package {}", entry.file_name().unwrap().to_string_lossy()),
    }))
}

fn newest_cached(dir: &Path, series: &str) -> Result<Option<Kernel>> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("linux-image-{series}."))
            && let Some(k) = cached(&e.path())?
        {
            found.push(k);
        }
    }
    found.sort_by(|a, b| natural_cmp(&a.release, &b.release));
    Ok(found.pop())
}

/// `boot/vmlinuz-<release>` inside an extracted package.
fn find_release(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    for e in fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-")
            && root.join("lib/modules").join(release).is_dir()
        {
            return Ok(release.to_string());
        }
    }
    bail!("no boot/vmlinuz-* with a matching lib/modules/ in {}", root.display())
}

/// Asks the suite's apt (its package lists only, no network) for the series' packages and their
/// candidate versions, newest first. Empty: apt works but knows no such package.
fn candidates(apt: &Apt, series: &str) -> Result<Vec<(String, String)>> {
    let prefix = format!("linux-image-{series}.");
    let out = apt
        .command("apt-cache")
        .arg("pkgnames")
        .arg(&prefix)
        .output()
        .context("running apt-cache (is this a Debian/Ubuntu host?)")?;
    // `6.1.` excludes `6.12.`; the suffix picks the cloud flavour without Secure Boot signing
    // (the signed package only wraps the same image).
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(&prefix) && n.ends_with("-cloud-amd64-unsigned"))
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let out = apt.command("apt-cache").arg("policy").args(&names).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(pkg), Some(cand)) = (&current, line.trim().strip_prefix("Candidate: ")) {
            // Names listed by pkgnames can lack a candidate (only in a stale list): skip them.
            if cand != "(none)" {
                found.push((pkg.clone(), cand.to_string()));
            }
        }
    }
    found.sort_by(|a, b| {
        if version_gt(&a.1, &b.1) {
            std::cmp::Ordering::Less
        } else if version_gt(&b.1, &a.1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    Ok(found)
}

/// Debian version order; dpkg knows the exact rules (epochs, `~`), natural order is the fallback.
fn version_gt(a: &str, b: &str) -> bool {
    match Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status() {
        Ok(s) if s.code().is_some() => s.success(),
        _ => natural_cmp(a, b).is_gt(),
    }
}

/// Compares digit runs as numbers: `6.1.0-9` < `6.1.0-56`.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((ld, buf)) if *ld == d => buf.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (na, nb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            na.len().cmp(&nb.len()).then_with(|| na.cmp(nb))
        } else {
            sa.cmp(sb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Installs the Debian package that provides `tool` when it is missing (xtask runs as root on the
/// development and CI machines).
pub fn ensure_tool(tool: &str, package: &str) -> Result<()> {
    if super::which(tool).is_some() {
        return Ok(());
    }
    eprintln!("d8-vm: {tool} is missing; installing the Debian package {package}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "--no-remove", package])
        .status();
    if !matches!(status, Ok(s) if s.success()) || super::which(tool).is_none() {
        bail!("{tool} is needed: install the Debian package {package} (apt-get install -y {package})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series() {
        assert!(is_series("6.1"));
        assert!(is_series("5.10"));
        assert!(!is_series("6"));
        assert!(!is_series("6.1.2"));
        assert!(!is_series("running"));
        assert!(!is_series("/boot/vmlinuz"));
    }

    #[test]
    fn natural() {
        assert!(natural_cmp("6.1.0-9-cloud", "6.1.0-56-cloud").is_lt());
        assert!(natural_cmp("6.1.192-2", "6.1.192-1").is_gt());
    }
}
