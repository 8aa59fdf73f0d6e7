"""torch.compile of the training forwards: on by default on CUDA, eager again where it fails.

What is compiled is the model's forward (under DDP: the DDP module, whose graph Dynamo splits at
its gradient buckets); the closed-form heatmap, the loss and the optimiser stay eager. A graph
is compiled at the first step of each batch shape it sees: ``dynamic=False``, so the partial
last batch of an epoch gets a static graph of its own instead of turning every step's graph
into a dynamic one. A step whose compilation fails (no C++ compiler or Triton, a GPU Triton does
not support, an operator Dynamo cannot trace) is run again eagerly from the state before it:
BatchNorm statistics restored, gradients cleared, a fresh DDP wrapper. The run then stays eager
and says so in one line. Every process compiles the same graphs for the same shapes, so they
fail, or not, together.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn

log = logging.getLogger("semisup.train.trainer")


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compilation raises: Dynamo's errors (tracing, backend), Inductor's (codegen,
    the C++ or Triton compiler)."""
    import torch._dynamo.exc
    import torch._inductor.exc
    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError


def compiles(setting: bool | None, device: torch.device) -> bool:
    """``--compile`` as given, else (the default) on for CUDA, off elsewhere (on a CPU the
    compilation takes longer than a demo's training)."""
    return setting if setting is not None else device.type == "cuda"


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
        except compile_errors() as err:
            cause = getattr(err, "inner_exception", None) or err  # BackendCompilerFailed: the backend's own error
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            log.warning("torch.compile failed at the first step of batch shapes %s (%s: %s); the run continues "
                        "eager from that step (pass --no-compile to skip the attempt)", shapes,
                        type(cause).__name__, first)
            with torch.no_grad():
                for saved, buffer in zip(buffers, self.model.buffers()):
                    buffer.copy_(saved)
            optimizer.zero_grad(set_to_none=True)
            self.module, self.compiled = self.wrap(), False
            return step(self.module)
        self.shapes.add(shapes)
        return result
