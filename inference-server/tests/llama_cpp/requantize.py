"""Writes a GGUF file in another quantisation with llama.cpp's own quantiser (the one
`llama-quantize` runs), from the file as downloaded:

    .venv-llama/bin/python requantize.py SOURCE.gguf TARGET.gguf Q4_0|Q8_0|Q5_0|Q4_K_M|Q6_K|F16

Requantising a quantised file is allowed (llama.cpp's --allow-requantize): the weights keep the
source's error, but the file is a real one of the target type, as llama.cpp writes it. Rows
whose length is not a multiple of 256 fall back from K-quants to other types, as llama.cpp
decides.
"""

import ctypes
import sys

import llama_cpp

FTYPES = {
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def main() -> None:
    source, target, kind = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)):
        sys.exit(f"llama.cpp could not write {target} as {kind}")


if __name__ == "__main__":
    main()
