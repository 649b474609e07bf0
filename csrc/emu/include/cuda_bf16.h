// Stand-in for the CUDA toolkit's <cuda_bf16.h> in emulator builds (csrc/emu/cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
