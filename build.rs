//! Builds the CUDA kernels in `kernels/`.
//!
//! - Always: scans `kernels/*.cu` for `KERNEL(name, Params)` entries and generates the `Kernel` enum.
//! - With nvcc (found via `NVCC`, `.cuda-toolchain/`, `CUDA_HOME`/`CUDA_PATH`, then `PATH`): compiles each file to a
//!   fatbin (sm_80/86/89/90 cubins plus compute_90 PTX) that is embedded in the binary, records `ptxas -v` figures
//!   per kernel and, when cuobjdump is present, what the sm_90 machine code contains (tensor-core instructions,
//!   128-bit loads, local memory). Without nvcc the build still succeeds; `--device cuda` then says how to build.
//! - With the `emu` feature: compiles the same files as C++ (the host emulation, `kernels/emu/`).

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];
/// The architecture whose machine code is inspected (the lent GPUs are H100/H200).
const SASS_ARCH: &str = "sm_90";
/// Kernel files built for sm_90a alone: their instructions (wgmma) exist only on compute capability 9.0, and the
/// backend loads them only there. Their figures stand in the table as sm_90's.
const SM90A_FILES: [&str; 1] = ["modconv_wgmma"];

struct KernelEntry {
    name: String,
    params: String,
    file: String,
}

#[derive(Default)]
struct PtxasInfo {
    /// Registers per architecture.
    registers: BTreeMap<String, u32>,
    spill_bytes: u32,
    stack_bytes: u32,
    shared_bytes: u32,
}

#[derive(Default)]
struct SassInfo {
    tensor_core_ops: Vec<String>,
    ldg128: u32,
    lds128: u32,
    ldsm: u32,
    local_memory_ops: u32,
    /// The loop with the most tensor-core instructions (the GEMM main loop): its instructions and theirs.
    main_loop_instructions: u32,
    main_loop_mma: u32,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "MMENGINE_REQUIRE_NVCC",
        "MMENGINE_EMU_SANITIZE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let sources = kernel_sources(&kernel_dir);
    let entries: Vec<KernelEntry> = sources.iter().flat_map(|f| scan_kernels(f)).collect();

    let mut compiled = None;
    match find_nvcc(&root) {
        Some(nvcc) => compiled = Some(compile_fatbins(&nvcc, &kernel_dir, &sources, &out)),
        None if env::var_os("MMENGINE_REQUIRE_NVCC").is_some() => {
            panic!("MMENGINE_REQUIRE_NVCC is set but no nvcc was found; run scripts/cuda-toolchain.sh")
        }
        None => println!(
            "cargo:warning=nvcc not found: CUDA kernels not built (run scripts/cuda-toolchain.sh to build them)"
        ),
    }
    write_generated(&out, &kernel_dir, &sources, &entries, compiled.as_ref());
    write_params(&out, &kernel_dir.join("params.h"));
    write_emu_entries(&out, &entries);

    #[cfg(feature = "emu")]
    build_emulation(&kernel_dir, &sources);
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read kernels/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
}

fn scan_kernels(file: &Path) -> Vec<KernelEntry> {
    let text = fs::read_to_string(file).unwrap();
    let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
    text.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("KERNEL(")
                .or_else(|| line.strip_prefix("KERNEL_BOUNDED("))?;
            let args: Vec<&str> = rest.split([',', ')']).map(str::trim).collect();
            Some(KernelEntry {
                name: args[0].to_string(),
                params: args[1].to_string(),
                file: stem.clone(),
            })
        })
        .collect()
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p)).filter(|p| runs(p));
    }
    let mut candidates = vec![root.join(".cuda-toolchain/nvidia/cu13/bin/nvcc")];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            candidates.push(PathBuf::from(home).join("bin/nvcc"));
        }
    }
    candidates.push(PathBuf::from("nvcc"));
    candidates.into_iter().find(|p| runs(p))
}

struct Compiled {
    nvcc_version: String,
    /// file stem -> fatbin path
    fatbins: Vec<(String, PathBuf)>,
    ptxas: BTreeMap<String, PtxasInfo>,
    sass: Option<BTreeMap<String, SassInfo>>,
}

fn compile_fatbins(nvcc: &Path, kernel_dir: &Path, sources: &[PathBuf], out: &Path) -> Compiled {
    let version = Command::new(nvcc).arg("--version").output().unwrap();
    let nvcc_version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let bin_dir = nvcc.parent().map(Path::to_path_buf).unwrap_or_default();
    let cuobjdump = [bin_dir.join("cuobjdump"), PathBuf::from("cuobjdump")]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });

    let mut fatbins = Vec::new();
    let mut ptxas = BTreeMap::new();
    let mut sass: Option<BTreeMap<String, SassInfo>> = cuobjdump.as_ref().map(|_| BTreeMap::new());
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(nvcc);
        cmd.args([
            "-fatbin",
            "-O3",
            "-std=c++17",
            "-Xptxas",
            "-v",
            "--threads",
            "0",
        ])
        .arg("-I")
        .arg(kernel_dir);
        if SM90A_FILES.contains(&stem.as_str()) {
            cmd.arg("-gencode").arg("arch=compute_90a,code=sm_90a");
        } else {
            for arch in ARCHS {
                let num = &arch[3..];
                let code = if arch == SASS_ARCH {
                    format!("[sm_{num},compute_{num}]")
                } else {
                    format!("sm_{num}")
                };
                cmd.arg("-gencode")
                    .arg(format!("arch=compute_{num},code={code}"));
            }
        }
        cmd.arg("-o").arg(&fatbin).arg(src);
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!("nvcc failed on {}:\n{log}", src.display());
        }
        parse_ptxas(&log, &mut ptxas);
        if let (Some(tool), Some(table)) = (&cuobjdump, sass.as_mut()) {
            let dump = Command::new(tool)
                .env("NVDISASM_PATH", tool.parent().unwrap_or(Path::new(".")))
                .args(["--dump-sass", "-arch", SASS_ARCH])
                .arg(&fatbin)
                .output()
                .unwrap();
            if !dump.status.success() {
                panic!(
                    "cuobjdump failed on {}:\n{}",
                    fatbin.display(),
                    String::from_utf8_lossy(&dump.stderr)
                );
            }
            parse_sass(&String::from_utf8_lossy(&dump.stdout), table);
        }
        fatbins.push((stem, fatbin));
    }
    for (name, info) in &ptxas {
        if info.spill_bytes > 0 {
            println!(
                "cargo:warning=kernel {name} spills {} bytes of registers",
                info.spill_bytes
            );
        }
    }
    Compiled {
        nvcc_version,
        fatbins,
        ptxas,
        sass,
    }
}

/// Reads `ptxas -v` output: per kernel and architecture, registers, spills, stack frame and static shared memory.
fn parse_ptxas(log: &str, table: &mut BTreeMap<String, PtxasInfo>) {
    let mut current: Option<(String, String)> = None;
    for line in log.lines() {
        let number_before = |key: &str| -> Option<u32> {
            let idx = line.find(key)?;
            line[..idx].split_whitespace().last()?.parse().ok()
        };
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap().to_string();
            let arch = parts.nth(1).unwrap_or("").to_string();
            current = Some((name, arch));
        } else if let Some((name, arch)) = &current {
            let info = table.entry(name.clone()).or_default();
            if let Some(stack) = number_before("bytes stack frame") {
                info.stack_bytes = info.stack_bytes.max(stack);
                let stores = number_before("bytes spill stores").unwrap_or(0);
                let loads = number_before("bytes spill loads").unwrap_or(0);
                info.spill_bytes = info.spill_bytes.max(stores.max(loads));
            }
            if let Some(regs) = number_before("registers") {
                info.registers.insert(arch.clone(), regs);
                if let Some(smem) = number_before("bytes smem") {
                    info.shared_bytes = info.shared_bytes.max(smem);
                }
            }
        }
    }
}

/// Counts, per function of a `cuobjdump --dump-sass` listing, the instructions the static checks look at.
fn parse_sass(dump: &str, table: &mut BTreeMap<String, SassInfo>) {
    let mut current: Option<String> = None;
    // Per function: each instruction's address, whether it is a tensor-core one, and a backward branch's target.
    let mut code: BTreeMap<String, Vec<(u32, bool, Option<u32>)>> = BTreeMap::new();
    for line in dump.lines() {
        if let Some(name) = line.split("Function : ").nth(1) {
            let name = name.trim().to_string();
            table.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let (Some(name), Some(text)) = (&current, line.split("*/").nth(1)) else {
            continue;
        };
        let Some(address) = line
            .split("/*")
            .nth(1)
            .and_then(|a| a.split("*/").next())
            .and_then(|a| u32::from_str_radix(a.trim(), 16).ok())
        else {
            continue;
        };
        // "  /*0110*/   @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;  /* 0x... */"
        let mut words = text.split_whitespace();
        let Some(mut op) = words.next() else { continue };
        if op.starts_with('@') {
            op = words.next().unwrap_or("");
        }
        let info = table.get_mut(name).unwrap();
        let base = op.split('.').next().unwrap_or("");
        let mma = matches!(base, "HMMA" | "HGMMA" | "IMMA" | "DMMA");
        if mma && !info.tensor_core_ops.iter().any(|o| o == base) {
            info.tensor_core_ops.push(base.to_string());
        }
        // LDGSTS is cp.async: a 128-bit global load that lands in shared memory.
        if matches!(base, "LDG" | "LDGSTS") && op.contains(".128") {
            info.ldg128 += 1;
        }
        if base == "LDS" && op.contains(".128") {
            info.lds128 += 1;
        }
        if base == "LDSM" {
            info.ldsm += 1;
        }
        if matches!(base, "LDL" | "STL") {
            info.local_memory_ops += 1;
        }
        let back_target = (base == "BRA")
            .then(|| words.find_map(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).ok()))
            .flatten()
            .filter(|&t| t < address);
        code.entry(name.clone())
            .or_default()
            .push((address, mma, back_target));
    }
    for (name, instructions) in code {
        let info = table.get_mut(&name).unwrap();
        for (end, &(_, _, target)) in instructions.iter().enumerate() {
            let Some(target) = target else { continue };
            let start = instructions.partition_point(|&(a, _, _)| a < target);
            let body = &instructions[start..=end];
            let mma = body.iter().filter(|i| i.1).count() as u32;
            let len = body.len() as u32;
            let better = mma > info.main_loop_mma
                || mma == info.main_loop_mma && mma > 0 && len < info.main_loop_instructions;
            if better {
                info.main_loop_mma = mma;
                info.main_loop_instructions = len;
            }
        }
    }
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn write_generated(
    out: &Path,
    kernel_dir: &Path,
    sources: &[PathBuf],
    entries: &[KernelEntry],
    compiled: Option<&Compiled>,
) {
    let mut s = String::new();
    s.push_str("/// Every kernel in `kernels/*.cu`, as found by build.rs.\n");
    s.push_str("#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\npub enum Kernel {\n");
    for e in entries {
        writeln!(s, "    {},", camel(&e.name)).unwrap();
    }
    s.push_str("}\n\nimpl Kernel {\n    pub const ALL: &'static [Kernel] = &[");
    for e in entries {
        write!(s, "Kernel::{}, ", camel(&e.name)).unwrap();
    }
    s.push_str("];\n\n    /// The kernel's symbol name.\n    pub fn name(self) -> &'static str {\n        match self {\n");
    for e in entries {
        writeln!(s, "            Kernel::{} => {:?},", camel(&e.name), e.name).unwrap();
    }
    s.push_str("        }\n    }\n\n    /// The C name of its parameter struct.\n    pub fn params_type(self) -> &'static str {\n        match self {\n");
    for e in entries {
        writeln!(
            s,
            "            Kernel::{} => {:?},",
            camel(&e.name),
            e.params
        )
        .unwrap();
    }
    s.push_str("        }\n    }\n\n    /// The `kernels/` file (stem) that defines it.\n    pub fn file(self) -> &'static str {\n        match self {\n");
    for e in entries {
        writeln!(s, "            Kernel::{} => {:?},", camel(&e.name), e.file).unwrap();
    }
    s.push_str("        }\n    }\n}\n\n");

    // The sources, for NVRTC when no nvcc was available at build time.
    s.push_str(
        "/// Kernel sources (file stem, text) and the headers they include (file name, text).\n",
    );
    writeln!(
        s,
        "/// Kernel files built for sm_90a only (wgmma), loaded on compute capability 9.0 only.\n\
         pub const SM90A_FILES: &[&str] = &{SM90A_FILES:?};"
    )
    .unwrap();
    s.push_str("pub const SOURCES: &[(&str, &str)] = &[\n");
    for src in sources {
        writeln!(
            s,
            "    ({:?}, include_str!({:?})),",
            src.file_stem().unwrap().to_string_lossy(),
            src.display()
        )
        .unwrap();
    }
    s.push_str("];\npub const HEADERS: &[(&str, &str)] = &[\n");
    let mut headers: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cuh" | "h")))
        .collect();
    headers.sort();
    for header in headers {
        writeln!(
            s,
            "    ({:?}, include_str!({:?})),",
            header.file_name().unwrap().to_string_lossy(),
            header.display()
        )
        .unwrap();
    }
    s.push_str("];\n\n");

    match compiled {
        Some(c) => {
            writeln!(
                s,
                "pub const NVCC_VERSION: Option<&str> = Some({:?});",
                c.nvcc_version
            )
            .unwrap();
            s.push_str("pub const FATBINS: &[(&str, &[u8])] = &[\n");
            for (stem, path) in &c.fatbins {
                writeln!(s, "    ({stem:?}, include_bytes!({:?})),", path.display()).unwrap();
            }
            s.push_str("];\n");
            writeln!(s, "pub const SASS_CHECKED: bool = {};", c.sass.is_some()).unwrap();
            s.push_str("pub const KERNEL_TABLE: &[KernelInfo] = &[\n");
            for e in entries {
                let p = c.ptxas.get(&e.name);
                let registers = p
                    .and_then(|p| {
                        let sm90a = format!("{SASS_ARCH}a");
                        p.registers
                            .get(SASS_ARCH)
                            .or(p.registers.get(&sm90a))
                            .copied()
                    })
                    .unwrap_or(0);
                let archs: Vec<&str> = p
                    .map(|p| p.registers.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let sass = c.sass.as_ref().and_then(|t| t.get(&e.name));
                let tc: Vec<&str> = sass
                    .map(|s| s.tensor_core_ops.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                writeln!(
                    s,
                    "    KernelInfo {{ name: {:?}, file: {:?}, archs: &{:?}, registers: {registers}, \
                     shared_bytes: {}, spill_bytes: {}, stack_bytes: {}, tensor_core_ops: &{tc:?}, \
                     ldg128: {}, lds128: {}, ldsm: {}, local_memory_ops: {}, main_loop_instructions: {}, \
                     main_loop_mma: {} }},",
                    e.name,
                    e.file,
                    archs,
                    p.map_or(0, |p| p.shared_bytes),
                    p.map_or(0, |p| p.spill_bytes),
                    p.map_or(0, |p| p.stack_bytes),
                    sass.map_or(0, |s| s.ldg128),
                    sass.map_or(0, |s| s.lds128),
                    sass.map_or(0, |s| s.ldsm),
                    sass.map_or(0, |s| s.local_memory_ops),
                    sass.map_or(0, |s| s.main_loop_instructions),
                    sass.map_or(0, |s| s.main_loop_mma),
                )
                .unwrap();
            }
            s.push_str("];\n");
        }
        None => {
            s.push_str("pub const NVCC_VERSION: Option<&str> = None;\n");
            s.push_str("pub const FATBINS: &[(&str, &[u8])] = &[];\n");
            s.push_str("pub const SASS_CHECKED: bool = false;\n");
            s.push_str("pub const KERNEL_TABLE: &[KernelInfo] = &[];\n");
        }
    }
    fs::write(out.join("kernels.rs"), s).unwrap();
}

#[cfg(feature = "emu")]
fn build_emulation(kernel_dir: &Path, sources: &[PathBuf]) {
    let emu_dir = kernel_dir.join("emu");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .warnings(false)
        .flag("-x")
        .flag("c++")
        .flag("-include")
        .flag(emu_dir.join("cuda_emu.h").to_str().unwrap())
        .include(kernel_dir)
        .file(emu_dir.join("runtime.cpp"));
    for src in sources {
        build.file(src);
    }
    // compute-sanitizer's checks, done on the emulation: `address` catches out-of-bounds global and shared memory
    // accesses, `thread` catches shared memory races (two threads of a block touching a word with no barrier
    // between them). Only the C++ side is instrumented.
    let sanitizer = env::var("MMENGINE_EMU_SANITIZE")
        .ok()
        .filter(|s| !s.is_empty());
    if let Some(sanitizer) = &sanitizer {
        assert!(
            matches!(sanitizer.as_str(), "address" | "thread"),
            "MMENGINE_EMU_SANITIZE must be `address` or `thread`, not `{sanitizer}`"
        );
        build
            .flag(format!("-fsanitize={sanitizer}"))
            .flag("-fno-omit-frame-pointer")
            .flag("-g");
    }
    build.compile("mmengine_emu");
    // rustc links with -nodefaultlibs, which drops the runtime that -fsanitize would add; link it by name (the
    // binaries then run with it preloaded, see scripts/emu-sanitize.sh).
    match sanitizer.as_deref() {
        Some("address") => println!("cargo:rustc-link-lib=dylib=asan"),
        Some(_) => println!("cargo:rustc-link-lib=dylib=tsan"),
        None => {}
    }
    // The emulation runs its blocks on a pool of OS threads.
    println!("cargo:rustc-link-lib=pthread");
}

/// Mirrors `kernels/params.h` in Rust: each struct field for field (pointers become 64-bit device addresses),
/// each enum value as a constant. One source of truth for the kernel ABI.
fn write_params(out: &Path, header: &Path) {
    let text = fs::read_to_string(header).unwrap();
    let mut s = String::new();
    let mut comment = Vec::new();
    let mut in_struct = false;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(c) = line.strip_prefix("//") {
            comment.push(c.trim().to_string());
            continue;
        }
        if let Some(body) = line.strip_prefix("enum ") {
            let inner = body.split(['{', '}']).nth(1).unwrap_or("");
            for item in inner.split(',').filter(|i| !i.trim().is_empty()) {
                let (name, value) = item.split_once('=').expect("enum values are explicit");
                writeln!(s, "pub const {}: i32 = {};", name.trim(), value.trim()).unwrap();
            }
            comment.clear();
        } else if let Some(name) = line.strip_prefix("struct ") {
            let name = name.trim_end_matches('{').trim();
            for c in comment.drain(..) {
                writeln!(s, "/// {c}").unwrap();
            }
            writeln!(s, "#[repr(C)]\n#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]").unwrap();
            writeln!(s, "pub struct {name} {{").unwrap();
            writeln!(s, "}}\nkernel_params!({name});").unwrap();
            in_struct = true;
        } else if in_struct && line.starts_with("};") {
            in_struct = false;
        } else if in_struct && line.ends_with(';') {
            let decl = line.trim_end_matches(';');
            let (ty, field) = decl.rsplit_once(' ').expect("field: type name;");
            let rust = match ty.trim() {
                t if t.ends_with('*') => "u64",
                "long long" => "i64",
                "int" => "i32",
                "unsigned" => "u32",
                "float" => "f32",
                "double" => "f64",
                other => panic!("params.h: unsupported field type '{other}'"),
            };
            // Insert before the struct's closing brace written above.
            let close = s.rfind("}\nkernel_params!").unwrap();
            for c in comment.drain(..) {
                s.insert_str(close, &format!("    /// {c}\n"));
            }
            let close = s.rfind("}\nkernel_params!").unwrap();
            s.insert_str(close, &format!("    pub {field}: {rust},\n"));
        } else if line.is_empty() {
            comment.clear();
        }
    }
    fs::write(out.join("params.rs"), s).unwrap();
}

/// The emulation's entry points, one per kernel (only linked with the `emu` feature).
fn write_emu_entries(out: &Path, entries: &[KernelEntry]) {
    let mut s = String::from("extern \"C\" {\n");
    for e in entries {
        writeln!(
            s,
            "    fn mmengine_emu_{}(params: *const std::ffi::c_void);",
            e.name
        )
        .unwrap();
    }
    s.push_str("}\n\n/// The emulated kernel's entry point.\npub(super) fn entry(kernel: Kernel) -> EmuEntry {\n    match kernel {\n");
    for e in entries {
        writeln!(
            s,
            "        Kernel::{} => mmengine_emu_{},",
            camel(&e.name),
            e.name
        )
        .unwrap();
    }
    s.push_str("    }\n}\n");
    fs::write(out.join("emu_entries.rs"), s).unwrap();
}
