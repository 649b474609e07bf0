// Stand-in for the CUDA toolkit's <vector_types.h> in emulator builds (csrc/emu/cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
