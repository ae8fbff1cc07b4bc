"""The instruction mix of a kernel's hot loop, from the sm_90 SASS that NVRTC makes of its module:
what each warp must issue per turn of the loop, without a GPU. A warp issues at most one
instruction a cycle, so a loop whose arithmetic (FFMA, HMMA) is a small share of it is bound by
issue, not by the pipe the kernel was written for (docs/benchmarks.md, eighteenth session).

    pip install nvidia-cuda-nvrtc nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm   # CUDA 13 wheels
    python3 benches/sass_mix.py attention_tc attention_tc_fwd_bf16_d64 HMMA
    python3 benches/sass_mix.py conv2d conv2d_fwd_wide_f32            # FFMA by default

The hot loop is the backward branch's range holding the most of the named instruction (the
fewest other instructions breaking ties). Unrolled inner loops fold into their outer loop. Every
instruction of the range is counted, those a forward branch inside it jumps over too (a masked
path, say); `--taken` counts the path that takes every such branch after the loop's first
named instruction instead (attention's tiles without the mask: the branch that skips a hidden
tile comes before the first product). Read the listing (`--list`) before trusting a count.
"""
import argparse
import collections
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wheel_dir(package):
    """The `nvidia/cu13` folder of an installed CUDA wheel (its lib/ and bin/)."""
    for base in sys.path:
        found = glob.glob(os.path.join(base, "nvidia", "cu13"))
        if found and glob.glob(os.path.join(found[0], package)):
            return found[0]
    sys.exit(f"no nvidia/cu13/{package} on sys.path: pip install the CUDA 13 wheels (see the header)")


def cubin(module, arch):
    """The CUBIN NVRTC makes of kernels/<module>.cu, with every header of kernels/."""
    cu13 = wheel_dir("lib/libnvrtc.so*")
    # libnvrtc opens its builtins by name at compile time; loaded first, they are found.
    for builtins in glob.glob(os.path.join(cu13, "lib", "libnvrtc-builtins.so*")):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(cu13, "lib", "libnvrtc.so*")))[0])
    kernels = os.path.join(ROOT, "kernels")
    headers = [h for h in os.listdir(kernels) if h.endswith((".cuh", ".h"))]
    names = (ctypes.c_char_p * len(headers))(*[h.encode() for h in headers])
    bodies = (ctypes.c_char_p * len(headers))(*[open(os.path.join(kernels, h)).read().encode() for h in headers])
    source = open(os.path.join(kernels, module + ".cu")).read().encode()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source, f"{module}.cu".encode(), len(headers), bodies, names):
        sys.exit("nvrtcCreateProgram failed")
    options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    status = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    if status:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(log.value.decode())
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    image = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetCUBIN(prog, image)
    return image.raw


def sass(image, kernel):
    """(address, instruction) pairs of one kernel, by cuobjdump (which runs nvdisasm)."""
    bin_dir = os.path.join(wheel_dir("bin/cuobjdump"), "bin")
    env = dict(os.environ, PATH=bin_dir + ":" + os.environ.get("PATH", ""))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(image)
        f.flush()
        out = subprocess.run(["cuobjdump", "-sass", "-fun", kernel, f.name], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    found = [re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in out.stdout.splitlines()]
    listing = [(int(m.group(1), 16), m.group(2).strip()) for m in found if m]
    if not listing:
        sys.exit(f"no kernel {kernel} in the module")
    return listing


def opcode(instruction):
    """FFMA of `@!P0 FFMA.FTZ R1, ...`."""
    words = instruction.split()
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def hot_loop(listing, wanted):
    """The instructions of the backward branch's range with the most `wanted`."""
    index = {address: i for i, (address, _) in enumerate(listing)}
    best = None
    for i, (address, instruction) in enumerate(listing):
        branch = re.search(r"BRA.*0x([0-9a-f]+)$", instruction)
        if not branch or int(branch.group(1), 16) >= address or int(branch.group(1), 16) not in index:
            continue
        body = listing[index[int(branch.group(1), 16)] : i + 1]
        count = sum(opcode(t) == wanted for _, t in body)
        if count and (best is None or (count, -len(body)) > (best[0], -len(best[1]))):
            best = (count, body)
    if best is None:
        sys.exit(f"no loop holds a {wanted}")
    return best[1]


def taken_path(body, wanted):
    """The loop's instructions on the path that takes each forward branch inside it that comes
    after its first `wanted`."""
    path, skip_to, seen = [], None, False
    end = body[-1][0]
    for address, instruction in body:
        if skip_to is not None and address < skip_to:
            continue
        skip_to = None
        path.append((address, instruction))
        seen = seen or opcode(instruction) == wanted
        branch = re.search(r"BRA.*0x([0-9a-f]+)$", instruction)
        if seen and branch and address < int(branch.group(1), 16) <= end:
            skip_to = int(branch.group(1), 16)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="kernels/<module>.cu")
    parser.add_argument("kernel", help="an extern \"C\" kernel of it")
    parser.add_argument("op", nargs="?", default="FFMA", help="the instruction the loop is for (FFMA, HMMA, ...)")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--list", action="store_true", help="print the loop's instructions too")
    parser.add_argument("--taken", action="store_true", help="the path taking the forward branches after the first OP")
    args = parser.parse_args()
    body = hot_loop(sass(cubin(args.module, args.arch), args.kernel), args.op)
    if args.taken:
        body = taken_path(body, args.op)
    mix = collections.Counter(opcode(t) for _, t in body)
    print(f"{args.kernel} ({args.arch}): hot loop of {len(body)} instructions, "
          f"{args.op} {mix[args.op]} ({100 * mix[args.op] / len(body):.0f}%)")
    print("  " + ", ".join(f"{op} {n}" for op, n in mix.most_common(16)))
    if args.list:
        for address, instruction in body:
            print(f"  {address:05x}  {instruction}")


if __name__ == "__main__":
    main()
