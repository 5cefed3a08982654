//! Just enough of ELF to check a built binary: its machine, whether it asks
//! for a dynamic loader, whether it still has a symbol table, and which glibc
//! versions it needs. Little-endian only: every target the project ships is.

use std::collections::BTreeSet;
use std::fmt;

/// `e_machine` of 32-bit ARM.
pub const EM_ARM: u16 = 40;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of 64-bit ARM.
pub const EM_AARCH64: u16 = 183;

/// Program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;
/// Section header type of a symbol table (what stripping removes).
const SHT_SYMTAB: u32 = 2;

/// A glibc symbol version, as in `GLIBC_2.31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion {
    /// 2, for every glibc in use.
    pub major: u32,
    /// The release.
    pub minor: u32,
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What is wrong with a built file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// It is not a little-endian ELF file, or it is cut short.
    #[error("not a little-endian ELF file, or a truncated one")]
    NotElf,
    /// It is built for another CPU.
    #[error("built for ELF machine {found}, not {wanted}")]
    Machine {
        /// Its `e_machine`.
        found: u16,
        /// The target's.
        wanted: u16,
    },
    /// It needs a dynamic loader where a static binary was wanted.
    #[error("dynamically linked, but the target is static musl")]
    Dynamic,
    /// It needs a newer glibc than the oldest system it is for has.
    #[error("needs glibc {newest}, newer than the {ceiling} it must run with")]
    GlibcTooNew {
        /// The newest version it needs.
        newest: GlibcVersion,
        /// The oldest it must run with.
        ceiling: GlibcVersion,
    },
    /// It still has its symbol table.
    #[error("not stripped: it still has a symbol table")]
    NotStripped,
}

/// The parts of an ELF header the checks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 64-bit (`ELFCLASS64`) or 32-bit.
    pub wide: bool,
    /// `e_machine`.
    pub machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
}

fn u16_at(bytes: &[u8], at: u64) -> Result<u16, Problem> {
    let at = usize::try_from(at).map_err(|_| Problem::NotElf)?;
    let slice = bytes.get(at..at + 2).ok_or(Problem::NotElf)?;
    Ok(u16::from_le_bytes([slice[0], slice[1]]))
}

fn u32_at(bytes: &[u8], at: u64) -> Result<u32, Problem> {
    let at = usize::try_from(at).map_err(|_| Problem::NotElf)?;
    let slice = bytes.get(at..at + 4).ok_or(Problem::NotElf)?;
    Ok(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
}

fn u64_at(bytes: &[u8], at: u64) -> Result<u64, Problem> {
    Ok(u64::from(u32_at(bytes, at)?) | (u64::from(u32_at(bytes, at + 4)?) << 32))
}

impl Header {
    /// Reads the header of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, Problem> {
        // Magic, then class (1: 32-bit, 2: 64-bit), then data (1: little-endian).
        if bytes.get(..4) != Some(b"\x7fELF".as_slice()) || bytes.get(5) != Some(&1) {
            return Err(Problem::NotElf);
        }
        let wide = match bytes.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(Problem::NotElf),
        };
        let machine = u16_at(bytes, 18)?;
        let header = if wide {
            Header {
                wide,
                machine,
                phoff: u64_at(bytes, 32)?,
                shoff: u64_at(bytes, 40)?,
                phentsize: u16_at(bytes, 54)?,
                phnum: u16_at(bytes, 56)?,
                shentsize: u16_at(bytes, 58)?,
                shnum: u16_at(bytes, 60)?,
            }
        } else {
            Header {
                wide,
                machine,
                phoff: u64::from(u32_at(bytes, 28)?),
                shoff: u64::from(u32_at(bytes, 32)?),
                phentsize: u16_at(bytes, 42)?,
                phnum: u16_at(bytes, 44)?,
                shentsize: u16_at(bytes, 46)?,
                shnum: u16_at(bytes, 48)?,
            }
        };
        Ok(header)
    }

    /// The dynamic loader it asks for (`PT_INTERP`), if any: a static binary
    /// has none.
    pub fn interpreter(&self, bytes: &[u8]) -> Result<Option<String>, Problem> {
        for index in 0..u64::from(self.phnum) {
            let entry = self.phoff + index * u64::from(self.phentsize);
            if u32_at(bytes, entry)? != PT_INTERP {
                continue;
            }
            let (offset, size) = if self.wide {
                (u64_at(bytes, entry + 8)?, u64_at(bytes, entry + 32)?)
            } else {
                (
                    u64::from(u32_at(bytes, entry + 4)?),
                    u64::from(u32_at(bytes, entry + 16)?),
                )
            };
            let start = usize::try_from(offset).map_err(|_| Problem::NotElf)?;
            let end = usize::try_from(offset + size).map_err(|_| Problem::NotElf)?;
            let path = bytes.get(start..end).ok_or(Problem::NotElf)?;
            let path = path.strip_suffix(b"\0").unwrap_or(path);
            return Ok(Some(String::from_utf8_lossy(path).into_owned()));
        }
        Ok(None)
    }

    /// Whether it has a symbol table section (`SHT_SYMTAB`): a stripped
    /// binary has none.
    pub fn has_symbol_table(&self, bytes: &[u8]) -> Result<bool, Problem> {
        for index in 0..u64::from(self.shnum) {
            let entry = self.shoff + index * u64::from(self.shentsize);
            if u32_at(bytes, entry + 4)? == SHT_SYMTAB {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The glibc versions a dynamically linked binary needs: every `GLIBC_2.N`
/// (or `2.N.M`, counted as `2.N`) name in it. The names of the versions it
/// needs are in its dynamic string table, so a scan for them finds each
/// one; a scan may only find more (a string the program itself holds),
/// never fewer, so a check against it errs on the safe side.
pub fn glibc_versions(bytes: &[u8]) -> BTreeSet<GlibcVersion> {
    const PREFIX: &[u8] = b"GLIBC_";
    let mut found = BTreeSet::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(PREFIX.len()).position(|w| w == PREFIX) {
        rest = &rest[at + PREFIX.len()..];
        let text: Vec<u8> = rest
            .iter()
            .copied()
            .take_while(|byte| byte.is_ascii_digit() || *byte == b'.')
            .collect();
        let mut parts = text.split(|byte| *byte == b'.');
        let number =
            |part: Option<&[u8]>| -> Option<u32> { std::str::from_utf8(part?).ok()?.parse().ok() };
        if let (Some(major), Some(minor)) = (number(parts.next()), number(parts.next())) {
            found.insert(GlibcVersion { major, minor });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(major: u32, minor: u32) -> GlibcVersion {
        GlibcVersion { major, minor }
    }

    #[test]
    fn glibc_versions_are_read_from_their_names() {
        fn check(input: &[u8], expect: &[GlibcVersion]) {
            let found: Vec<GlibcVersion> = glibc_versions(input).into_iter().collect();
            assert_eq!(found, expect, "{}", String::from_utf8_lossy(input));
        }
        check(b"", &[]);
        check(
            b"\0GLIBC_2.4\0GLIBC_2.31\0",
            &[version(2, 4), version(2, 31)],
        );
        check(b"GLIBC_2.34\0GLIBC_2.4", &[version(2, 4), version(2, 34)]);
        check(b"GLIBC_2.3.4\0", &[version(2, 3)]);
        check(b"GLIBC_PRIVATE\0GLIBC_\0GLIBC_2\0", &[]);
        check(b"GLIBC_GLIBC_2.17", &[version(2, 17)]);
    }

    /// A 64-bit ELF header for `machine` with one program header of `kind`
    /// and one section header of `section`.
    fn elf64(machine: u16, kind: u32, section: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56 + 64 + 8];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        bytes[40..48].copy_from_slice(&120u64.to_le_bytes()); // shoff
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        bytes[58..60].copy_from_slice(&64u16.to_le_bytes());
        bytes[60..62].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&kind.to_le_bytes());
        // The interpreter's path: offset 184, 4 bytes.
        bytes[64 + 8..64 + 16].copy_from_slice(&184u64.to_le_bytes());
        bytes[64 + 32..64 + 40].copy_from_slice(&4u64.to_le_bytes());
        bytes[124..128].copy_from_slice(&section.to_le_bytes());
        bytes[184..188].copy_from_slice(b"/ld\0");
        bytes
    }

    #[test]
    fn a_header_tells_machine_loader_and_symbols() {
        let dynamic = elf64(EM_AARCH64, PT_INTERP, SHT_SYMTAB);
        let header = Header::parse(&dynamic).expect("an ELF header");
        assert!(header.wide);
        assert_eq!(header.machine, EM_AARCH64);
        assert_eq!(header.interpreter(&dynamic), Ok(Some("/ld".to_string())));
        assert_eq!(header.has_symbol_table(&dynamic), Ok(true));

        let static_stripped = elf64(EM_X86_64, 1, 3);
        let header = Header::parse(&static_stripped).expect("an ELF header");
        assert_eq!(header.interpreter(&static_stripped), Ok(None));
        assert_eq!(header.has_symbol_table(&static_stripped), Ok(false));
    }

    #[test]
    fn what_is_not_elf_or_cut_short_is_refused() {
        assert_eq!(Header::parse(b"#!/bin/sh\n"), Err(Problem::NotElf));
        let whole = elf64(EM_ARM, PT_INTERP, SHT_SYMTAB);
        let header = Header::parse(&whole).expect("an ELF header");
        assert_eq!(header.interpreter(&whole[..100]), Err(Problem::NotElf));
        let mut big_endian = whole.clone();
        big_endian[5] = 2;
        assert_eq!(Header::parse(&big_endian), Err(Problem::NotElf));
    }

    #[test]
    fn the_test_itself_is_an_elf_file_for_this_machine() {
        let exe = std::env::current_exe().expect("the test's path");
        let bytes = std::fs::read(exe).expect("read the test executable");
        let header = Header::parse(&bytes).expect("an ELF header");
        let machine = match std::env::consts::ARCH {
            "x86_64" => EM_X86_64,
            "aarch64" => EM_AARCH64,
            _ => EM_ARM,
        };
        assert_eq!(header.machine, machine);
        assert_eq!(
            header.has_symbol_table(&bytes),
            Ok(true),
            "a test keeps symbols"
        );
    }
}
