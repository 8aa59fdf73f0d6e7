"""torch.compile of the training forwards: on by default on CUDA, eager again where it fails.

What is compiled is the model's forward (under DDP: the DDP module, whose graph Dynamo splits at
its gradient buckets); the closed-form heatmap, the loss and the optimiser stay eager. A graph
is compiled at the first step of each batch shape it sees: ``dynamic=False``, so the partial
last batch of an epoch gets a static graph of its own instead of turning every step's graph
into a dynamic one. A step whose compilation fails (no C++ compiler or Triton, a GPU Triton does
not support, an operator Dynamo cannot trace, Inductor's backward at the first backward) is run
again eagerly from the state before it: BatchNorm statistics restored, gradients cleared, a fresh
DDP wrapper. The run then stays eager and says so in one line. Only the first step of each new
batch shape is guarded; a recompilation for another reason runs unguarded. Every process compiles
the same graphs for the same shapes, so they fail, or not, together; a failure on some processes
only would leave the others in the step's gradient all-reduce (not handled).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn

log = logging.getLogger("semisup.train.trainer")


class CompiledForward:
    """The module the step calls: compiled, or the eager wrapper ``wrap()`` builds.

    ``wrap`` builds the eager module (the model, or a DDP wrapper of it) and is called again for
    the fallback; ``model`` is the underlying model, whose buffers a failed step restores."""

    def __init__(self, model: nn.Module, wrap: Callable[[], nn.Module], enabled: bool):
        self.model, self.wrap = model, wrap
        eager = wrap()
        self.module = torch.compile(eager, dynamic=False) if enabled else eager
        self.compiled = enabled
        self.shapes: set = set()  # the batch shapes whose graphs are compiled

    def run(self, step: Callable[[nn.Module], object], shapes: tuple, optimizer: torch.optim.Optimizer):
        """``step(module)`` (forwards, backward, optimiser step) for a batch of ``shapes``; where
        those shapes are new to the compiled module, guarded by the fallback."""
        if not self.compiled or shapes in self.shapes:
            return step(self.module)
        buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            result = step(self.module)
        except Exception as err:  # whatever compiling raised: the eager rerun tells
            # Inductor compiles the backward at the first backward, and its errors are not
            # Dynamo's: any error of a first step is retried eagerly, and only the eager
            # step's own error (a real one) is raised.
            cause = getattr(err, "inner_exception", None) or err  # BackendCompilerFailed: the backend's own error
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"
        else:
            self.shapes.add(shapes)
            return result
        del cause  # the failed step's frames (activations, the old DDP's reducer) go with it
        self.fall_back(buffers, optimizer)
        result = step(self.module)
        log.warning("torch.compile failed at the first step of batch shapes %s (%s); the step ran again eagerly "
                    "from the state before it and the run continues eager (pass --no-compile to skip the attempt)",
                    shapes, reason)
        return result

    def fall_back(self, buffers: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """The state before the failed step (BatchNorm statistics, no gradients) and a fresh eager
        module: the compiled one, and the DDP wrapper inside it with its reducer's hooks, are freed."""
        import gc
        with torch.no_grad():
            for saved, buffer in zip(buffers, self.model.buffers()):
                buffer.copy_(saved)
        optimizer.zero_grad(set_to_none=True)
        self.module, self.compiled = None, False
        torch._dynamo.reset()
        gc.collect()
        self.module = self.wrap()
