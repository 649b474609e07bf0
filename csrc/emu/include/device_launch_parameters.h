// Stand-in for the CUDA toolkit's <device_launch_parameters.h> in emulator builds (csrc/emu/cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
