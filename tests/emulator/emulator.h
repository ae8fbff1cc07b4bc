// Shared by the emulator's driver (driver.cpp) and scheduler (scheduler.cpp).
#pragma once
#include "cuda_emu.h"

#include <functional>
#include <string>

// A registered kernel: its name and the call that unpacks cuLaunchKernel's parameter array.
struct EmulatedKernel {
    std::string name;
    std::function<void(void**)> run;
};

// The most threads a block may have.
constexpr int kMaxThreads = 1024;

// Whether NABLA_EMULATOR_ORDER=reverse asks for blocks and threads last to first.
bool reverse_order();

// Runs every block of a launch; false, with the reason in `failure`, when a block's threads
// deadlock at a barrier. One launch at a time, whatever the calling thread.
bool run_launch(EmulatedKernel* kernel, void** params, dim3 grid, dim3 block, std::string* failure);
