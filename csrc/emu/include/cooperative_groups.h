// Stand-in for <cooperative_groups.h> in emulator builds: not emulated (see csrc/emu/cuda_emu.h).
#pragma once
#error "cooperative groups are not emulated by csrc/emu; use __syncthreads/__shfl_*_sync, or atomics with Config::resident_blocks for grid-wide waits"
