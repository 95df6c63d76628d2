//! The shared libraries an ELF file needs, read from its dynamic section.
//!
//! `ldd` would do, but it runs the dynamic loader once per file: over a second for iptables'
//! 120 plugins, on every run. Reading `DT_NEEDED` and searching the loader's directories is
//! instant; files this cannot handle (other ELF classes, unresolvable names) fall back to `ldd`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// What a dynamically linked file asks the loader for.
#[derive(Debug, Default)]
pub struct Dynamic {
    /// PT_INTERP: the dynamic loader.
    pub interp: Option<PathBuf>,
    /// DT_NEEDED names resolved to host paths.
    pub libs: Vec<PathBuf>,
}

/// `Ok(None)` when the file is not something this parser understands (then ask `ldd`).
pub fn dynamic(path: &Path, search: &[PathBuf]) -> std::io::Result<Option<Dynamic>> {
    let f = File::open(path)?;
    let mut ident = [0u8; 64];
    if f.read_at(&mut ident, 0)? < 64 || &ident[..4] != b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
        return Ok(None); // not ELF64 little-endian
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let phoff = u64_at(&ident, 0x20);
    let phentsize = u16_at(&ident, 0x36) as usize;
    let phnum = u16_at(&ident, 0x38) as usize;
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return Ok(None);
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.read_exact_at(&mut ph, phoff)?;

    let mut out = Dynamic::default();
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, filesz)
    for i in 0..phnum {
        let h = &ph[i * phentsize..(i + 1) * phentsize];
        let (typ, offset, vaddr, filesz) = (u32_at(h, 0), u64_at(h, 8), u64_at(h, 16), u64_at(h, 32));
        match typ {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_INTERP if filesz < 4096 => {
                let mut s = vec![0u8; filesz as usize];
                f.read_exact_at(&mut s, offset)?;
                let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
                out.interp = Some(PathBuf::from(String::from_utf8_lossy(&s[..end]).into_owned()));
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(Some(out)); // statically linked
    };
    if dyn_size > 1 << 20 {
        return Ok(None);
    }
    let mut d = vec![0u8; dyn_size as usize];
    f.read_exact_at(&mut d, dyn_off)?;
    let (mut needed, mut strtab, mut paths) = (Vec::new(), None, Vec::new());
    for e in d.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            0 => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_RPATH | DT_RUNPATH => paths.push(val),
            _ => {}
        }
    }
    let Some(strtab) = strtab else {
        return Ok(None);
    };
    // DT_STRTAB is an address: map it to a file offset through the PT_LOAD segments.
    let Some(strtab_off) = loads
        .iter()
        .find(|(va, _, sz)| strtab >= *va && strtab < va + sz)
        .map(|(va, off, _)| strtab - va + off)
    else {
        return Ok(None);
    };
    let read_str = |off: u64| -> std::io::Result<String> {
        let mut buf = vec![0u8; 256];
        let n = f.read_at(&mut buf, strtab_off + off)?;
        let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    };

    let origin = path.parent().unwrap_or(Path::new("/"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        for d in read_str(p)?.split(':').filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())));
        }
    }
    dirs.extend(search.iter().cloned());
    for n in needed {
        let name = read_str(n)?;
        let found = if name.contains('/') {
            Some(PathBuf::from(&name)).filter(|p| p.is_file())
        } else {
            dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file())
        };
        match found {
            Some(p) => out.libs.push(p),
            None => return Ok(None), // let ldd explain what is missing
        }
    }
    Ok(Some(out))
}

/// The loader's default search directories (ld.so.conf, then the built-in ones).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut confs = vec![PathBuf::from("/etc/ld.so.conf")];
    if let Ok(rd) = std::fs::read_dir("/etc/ld.so.conf.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        more.sort();
        confs.extend(more);
    }
    for c in confs {
        if let Ok(text) = std::fs::read_to_string(&c) {
            for line in text.lines().map(str::trim) {
                if line.starts_with('/') {
                    dirs.push(PathBuf::from(line));
                }
            }
        }
    }
    for d in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_dependencies() {
        // This test binary is a normal x86_64-unknown-linux-gnu executable: it needs libc.
        let exe = std::env::current_exe().unwrap();
        let d = dynamic(&exe, &search_dirs()).unwrap().expect("parsable");
        assert!(d.interp.is_some());
        assert!(
            d.libs
                .iter()
                .any(|l| l.file_name().unwrap().to_string_lossy().starts_with("libc.so")),
            "{d:?}"
        );
    }
}
