//! The kernel compatibility harness's machinery: the report, the generator, per-chunk
//! checksums, the boot of the reference kernel (through scripts/kernel-compat.sh) and what it
//! printed, and a `snapfs mount` run by the test.

use super::*;

/// Everything found during a test; mismatches fail the test at the end, after all were printed.
#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
}

impl Report {
    pub fn fail(&mut self, msg: String) {
        eprintln!("MISMATCH: {msg}");
        self.failures.push(msg);
    }

    pub fn note(&self, msg: &str) {
        eprintln!("kernel-compat: {msg}");
    }

    /// The mismatches found, one line each, for the test to assert on.
    pub fn into_failures(self) -> Vec<String> {
        self.failures
    }
}

pub use snapfs::rng::Rng;

/// What the kernel suite draws beyond the shared generator.
pub trait KernelDraws {
    /// A write length in bytes: mostly small, some crossing many chunks.
    fn write_len(&mut self) -> u64;
}

impl KernelDraws for Rng {
    fn write_len(&mut self) -> u64 {
        match self.below(20) {
            0..=9 => 1 + self.below(4 * KIB),
            10..=16 => 1 + self.below(64 * KIB),
            _ => 1 + self.below(512 * KIB),
        }
    }
}

/// Per-chunk checksums of a device's contents (a multiply-rotate hash over 64-bit words).
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub chunk_bytes: u64,
    pub sums: Vec<u64>,
}

impl View {
    pub fn of(data: &[u8], chunk_bytes: u64) -> View {
        let sums = data
            .chunks(chunk_bytes as usize)
            .map(|c| {
                let h = c.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
                    let mut b = [0u8; 8];
                    b[..w.len()].copy_from_slice(w);
                    (h.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                });
                // splitmix64's finaliser: every input bit reaches every output bit.
                snapfs::rng::mix(h)
            })
            .collect();
        View { chunk_bytes, sums }
    }
}

/// Compares two views chunk by chunk; `what` names the seed, case and view.
pub fn compare_views(r: &mut Report, what: &str, a_name: &str, a: &View, b_name: &str, b: &View) {
    compare_views_into(r, false, what, a_name, a, b_name, b);
}

pub fn compare_views_into(
    r: &mut Report,
    quiet: bool,
    what: &str,
    a_name: &str,
    a: &View,
    b_name: &str,
    b: &View,
) {
    if quiet {
        if a != b {
            r.failures.push(what.to_string());
        }
        return;
    }
    if a.chunk_bytes != b.chunk_bytes || a.sums.len() != b.sums.len() {
        return r.fail(format!(
            "{what}: {a_name} has {} chunks of {} bytes, {b_name} {} of {}",
            a.sums.len(),
            a.chunk_bytes,
            b.sums.len(),
            b.chunk_bytes
        ));
    }
    let bad: Vec<usize> = (0..a.sums.len())
        .filter(|&i| a.sums[i] != b.sums[i])
        .collect();
    if bad.is_empty() {
        return;
    }
    let cs = a.chunk_bytes / SECTOR;
    let shown: Vec<String> = bad
        .iter()
        .take(6)
        .map(|&i| {
            format!(
                "chunk {i} (sectors {}..{}): {a_name} {:016x} {b_name} {:016x}",
                i as u64 * cs,
                (i as u64 + 1) * cs,
                a.sums[i],
                b.sums[i]
            )
        })
        .collect();
    r.fail(format!(
        "{what}: {} of {} chunks of {cs} sectors differ; {}",
        bad.len(),
        a.sums.len(),
        shown.join("; ")
    ));
}

/// The status word of a `dmsetup status` line: what follows `0 <len> <target>`.
pub fn status_word(line: &str) -> String {
    line.split_whitespace()
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares a snapfs status line (`0 <len> <target> <word>`) with the kernel's. With
/// `word_only` the target names may differ (a snapshot snapfs is merging, loaded by the kernel
/// as a plain snapshot).
pub fn compare_status(
    r: &mut Report,
    what: &str,
    snapfs: Option<&String>,
    kernel: Option<String>,
    word_only: bool,
) {
    match (snapfs, kernel) {
        (Some(s), Some(k)) => {
            let same = if word_only {
                status_word(s) == status_word(&k)
            } else {
                *s == k
            };
            if !same {
                r.fail(format!(
                    "{what}: status differs: snapfs \"{s}\", kernel \"{k}\""
                ));
            }
        }
        (s, k) => r.fail(format!(
            "{what}: status missing: snapfs {s:?}, kernel {k:?}"
        )),
    }
}

pub struct Harness {
    pub script: PathBuf,
    pub kernel: String,
}

pub fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kernel-compat.sh");
        let out = Command::new(&script)
            .arg("setup")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/kernel-compat.sh setup failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kernel = stdout
            .lines()
            .find_map(|l| l.strip_prefix("KERNEL_PACKAGE="))
            .unwrap_or("?")
            .to_string();
        Harness { script, kernel }
    })
}

/// A scratch directory for one test and seed (under $SNAPFS_KERNEL_WORK or the temp dir; it
/// must allow O_DIRECT for qemu's cache=none, so not an old tmpfs).
pub fn work_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("SNAPFS_KERNEL_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join("snapfs-kernel-compat")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn vd_name(n: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if n < 26 {
        format!("vd{}", letters[n] as char)
    } else {
        format!(
            "vd{}{}",
            letters[n / 26 - 1] as char,
            letters[n % 26] as char
        )
    }
}

/// One guest boot being put together: the drives, the script, where each dump goes.
pub struct Boot {
    pub name: String,
    pub dir: PathBuf,
    pub drives: Vec<PathBuf>,
    pub script: String,
    /// label -> (offset, size) in MiB on the results drive.
    pub dumps: BTreeMap<String, (u64, u64)>,
    pub results_mib: u64,
    pub pattern: Vec<u8>,
}

impl Boot {
    pub fn new(dir: &Path, name: &str) -> Boot {
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("guest")).unwrap();
        Boot {
            name: name.to_string(),
            dir,
            drives: Vec::new(),
            script: String::new(),
            dumps: BTreeMap::new(),
            results_mib: 0,
            pattern: Vec::new(),
        }
    }

    /// Attaches an image; returns its device in the guest.
    pub fn drive(&mut self, path: &Path) -> String {
        self.drives.push(path.to_path_buf());
        format!("/dev/{}", vd_name(self.drives.len() - 1))
    }

    pub fn line(&mut self, s: &str) {
        self.script.push_str(s);
        self.script.push('\n');
    }

    pub fn create(&mut self, dm: &str, table: &str) {
        self.line(&format!("create {dm} \"{table}\""));
    }

    pub fn remove(&mut self, dm: &str) {
        self.line(&format!("remove {dm}"));
    }

    pub fn status(&mut self, dm: &str, label: &str) {
        self.line(&format!("status {dm} {label}"));
    }

    /// Copies `dev` (whole MiBs) onto the results drive under `label`.
    pub fn dump(&mut self, dev: &str, label: &str, bytes: u64) {
        assert!(bytes.is_multiple_of(MIB), "dumps are whole MiBs");
        let mib = bytes / MIB;
        self.line(&format!("dump {dev} $R {} {mib} {label}", self.results_mib));
        assert!(
            self.dumps
                .insert(label.to_string(), (self.results_mib, mib))
                .is_none()
        );
        self.results_mib += mib;
    }

    pub fn dump_dm(&mut self, dm: &str, label: &str, bytes: u64) {
        self.dump(&format!("/dev/mapper/{dm}"), label, bytes);
    }

    pub fn readable(&mut self, dm: &str, label: &str) {
        self.line(&format!("readable /dev/mapper/{dm} {label}"));
    }

    /// The kernel performs `writes` (pattern bytes, to the case's dm devices) in order, one at
    /// a time, O_DIRECT, in one process.
    pub fn writes(&mut self, case: &Case, writes: &[KWrite]) {
        self.line("writes <<'EOF'");
        for w in writes {
            let dm = case.dm(&w.target);
            self.line(&format!("/dev/mapper/{dm} {} {} {}", w.src, w.dst, w.len));
        }
        self.line("EOF");
    }

    /// Boots the kernel with the drives attached and runs the script. Panics when the guest
    /// does not finish (the harness itself failed); mismatches are for the caller to find.
    pub fn run(mut self) -> Console {
        let results = self.dir.join("results.img");
        let f = File::create(&results).unwrap();
        f.set_len(self.results_mib.max(1) * MIB).unwrap();
        drop(f);
        let r = self.drive(&results);
        assert!(
            self.drives.len() < DRIVES_MAX,
            "boot {}: {} drives is too many",
            self.name,
            self.drives.len()
        );
        let guest = self.dir.join("guest");
        let script = format!(
            ". /usr/share/snapfs/lib.sh\nR={r}\n\
             dmsetup targets | while read -r t v; do say TARGET \"$t $v\"; done\n{}",
            self.script
        );
        std::fs::write(guest.join("run.sh"), script).unwrap();
        std::fs::write(guest.join("pattern"), &self.pattern).unwrap();
        let log = self.dir.join("console.log");
        // The guest writes to its drives, so a second attempt needs them as they were.
        let pristine = self.keep_drives();
        let started = Instant::now();
        let mut out = self.boot_once(&guest, &log);
        let mut attempt = 1;
        while out.status.code() == Some(BOOT_TIMED_OUT) && attempt < BOOT_ATTEMPTS {
            // A guest that ran out of time is booted again, on the drives as they were, so
            // that a stall of the emulator (an idle guest whose I/O never completes; seen in
            // snapfs-writes boots, at different seeds in one run) does not fail the suite. The
            // console of each stalled attempt stays in console-timeout-N.log; a guest that
            // stalls every time fails below.
            let kept = self.dir.join(format!("console-timeout-{attempt}.log"));
            eprintln!(
                "kernel-compat: boot {} ran out of time; its console is in {}. Booting again \
                 (attempt {} of {BOOT_ATTEMPTS}).\n{}",
                self.name,
                kept.display(),
                attempt + 1,
                console_tail(&out.stdout, 10)
            );
            let _ = std::fs::rename(&log, &kept);
            self.restore_drives(&pristine);
            out = self.boot_once(&guest, &log);
            attempt += 1;
        }
        let elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(self.dir.join("pristine"));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            panic!(
                "boot {} failed ({}):\n{}\n--- console (last 40 lines) ---\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                console_tail(&out.stdout, 40)
            );
        }
        let lines: Vec<String> = stdout
            .lines()
            // A line may start with the firmware's terminal escapes.
            .filter_map(|l| l.find("@@").map(|i| l[i + 2..].trim_end().to_string()))
            .collect();
        let console = Console {
            name: self.name,
            lines,
            results,
            dumps: self.dumps,
            elapsed,
        };
        eprintln!(
            "kernel-compat: boot {} took {:.1} s ({} drives, {} MiB dumped)",
            console.name,
            console.elapsed.as_secs_f64(),
            self.drives.len(),
            self.results_mib
        );
        console
    }
}

impl Boot {
    /// One run of `scripts/kernel-compat.sh boot` over the drives.
    fn boot_once(&self, guest: &Path, log: &Path) -> std::process::Output {
        // Generous per boot: a scenario boot takes 15-50 s here, more on a loaded machine. It
        // only guards against a stalled guest; the console's time stamps tell a stall (no new
        // line) from a crawl (steady progress).
        let timeout = std::env::var("SNAPFS_KERNEL_TIMEOUT").unwrap_or_else(|_| "300".into());
        Command::new(&harness().script)
            .arg("boot")
            .args(["--timeout", &timeout])
            .arg("--log")
            .arg(log)
            .arg(guest)
            .args(&self.drives)
            .output()
            .expect("run scripts/kernel-compat.sh boot")
    }

    /// Copies every drive (sparse) into `pristine/`; returns the copies, in drive order.
    fn keep_drives(&self) -> Vec<PathBuf> {
        let dir = self.dir.join("pristine");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        self.drives
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let copy = dir.join(i.to_string());
                copy_sparse(d, &copy);
                copy
            })
            .collect()
    }

    fn restore_drives(&self, pristine: &[PathBuf]) {
        for (copy, d) in pristine.iter().zip(&self.drives) {
            copy_sparse(copy, d);
        }
    }
}

/// Boots of one guest before a stall fails the suite (each up to `SNAPFS_KERNEL_TIMEOUT`
/// seconds, 300 by default: a boot takes 20-60 s here, more under load).
const BOOT_ATTEMPTS: u32 = 3;

/// The exit status of `scripts/kernel-compat.sh boot` when the guest ran out of time.
const BOOT_TIMED_OUT: i32 = 124;

fn copy_sparse(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// The last `n` lines of a console.
fn console_tail(stdout: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a boot printed ("@@" lines) and dumped.
pub struct Console {
    pub name: String,
    pub lines: Vec<String>,
    pub results: PathBuf,
    pub dumps: BTreeMap<String, (u64, u64)>,
    pub elapsed: Duration,
}

impl Console {
    /// The rest of every line `@@KEY ...`.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines.iter().filter_map(move |l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' ').or((rest.is_empty()).then_some("")))
        })
    }

    pub fn one(&self, key: &str, label: &str) -> Option<String> {
        self.values(key)
            .filter_map(|v| v.strip_prefix(label)?.strip_prefix(' '))
            .last()
            .map(str::to_string)
    }

    pub fn status(&self, label: &str) -> Option<String> {
        self.one("STATUS", label)
    }

    /// The guest's failed writes to the devices of case `case` (`@@WFAIL /dev/mapper/CASE-DEV A
    /// B`), as `DEV A B`, in order.
    pub fn failed_writes(&self, case: &str) -> Vec<String> {
        self.values("WFAIL")
            .filter_map(|v| {
                let mut w = v.split_whitespace();
                let dev = w.next()?.strip_prefix(&format!("/dev/mapper/{case}-"))?;
                Some(format!("{dev} {} {}", w.next()?, w.next()?))
            })
            .collect()
    }

    pub fn kernel(&self) -> String {
        self.values("BEGIN").next().unwrap_or("?").to_string()
    }

    pub fn targets(&self) -> Vec<String> {
        self.values("TARGET")
            .filter(|t| t.starts_with("snapshot"))
            .map(str::to_string)
            .collect()
    }

    /// The kernel's view dumped under `label`.
    pub fn dump(&self, label: &str) -> Result<Vec<u8>, String> {
        let Some(&(off, mib)) = self.dumps.get(label) else {
            return Err(format!("the harness dumped no view {label}"));
        };
        match self.one("DUMP", label).as_deref() {
            Some("ok") => {}
            other => return Err(format!("the guest could not read it: {other:?}")),
        }
        let f = File::open(&self.results).unwrap();
        let mut buf = vec![0u8; (mib * MIB) as usize];
        f.read_exact_at(&mut buf, off * MIB).unwrap();
        if std::env::var_os("SNAPFS_KERNEL_SELFTEST").is_some() {
            // Proves the checks check: one flipped byte per view must fail every comparison.
            let i = buf.len() / 3 + 5;
            buf[i] ^= 0x40;
        }
        Ok(buf)
    }

    /// Harness-level errors (a table the kernel refused, a failed write, ...) of one case.
    pub fn errors(&self, case: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| {
                let mut w = l.split_whitespace();
                let key = w.next().unwrap_or("");
                let arg = w.next().unwrap_or("");
                let of_case = arg.starts_with(&format!("{case}-"))
                    || arg.starts_with(&format!("/dev/mapper/{case}-"));
                match key {
                    "CREATEFAIL" | "REMOVEFAIL" | "WFAIL" => of_case,
                    "ERROR" | "WARN" => true,
                    "MERGED" => of_case && !l.ends_with(" ok"),
                    _ => false,
                }
            })
            .cloned()
            .collect()
    }

    pub fn describe(&self) -> String {
        format!("kernel {}; {}", self.kernel(), self.targets().join(", "))
    }
}

/// A `snapfs mount -f` run by the test; unmounted (lazily) and killed if the test panics.
pub struct Mount {
    pub mnt: PathBuf,
    pub log: PathBuf,
    pub child: Option<std::process::Child>,
}

impl Mount {
    pub fn start(origin: &Path, mnt: &Path, options: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(mnt).unwrap();
        let log = mnt.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_snapfs"))
            .arg("mount")
            .arg(origin)
            .arg(mnt)
            .args(["-o", options, "-f"])
            .stdin(std::process::Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .map_err(|e| format!("cannot start snapfs: {e}"))?;
        let mut m = Mount {
            mnt: mnt.to_path_buf(),
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !m.is_mounted() {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("snapfs exited ({st}) before mounting: {}", m.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the mount did not appear (/dev/fuse?): {}",
                    m.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mnt = self.mnt.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*mnt))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// One command to the control file; an error carries the answer.
    pub fn control(&self, command: &str) -> Result<(), String> {
        let path = self.file("control");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("control: {e}"))?;
        f.write_all(command.as_bytes()).map_err(|e| {
            let answer = std::fs::read_to_string(&path).unwrap_or_default();
            format!("control {command:?}: {e}: {answer}")
        })
    }

    /// `umount`, then waits for the server to exit (it flushes every device first).
    pub fn stop(mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("umount").arg(&self.mnt).output().unwrap();
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("umount: {}", String::from_utf8_lossy(&out.stderr)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return if st.success() {
                    Ok(())
                } else {
                    Err(format!("snapfs exited with {st}: {}", self.log()))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("snapfs did not exit after umount".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
