"""Data-parallel fairseq-train on CPU (gloo) under torchrun.

fairseq assumes one GPU per process: under torchrun it sets ``device_id = rank % cuda.device_count()``
(a division by zero without CUDA), takes the world size from the CUDA device count, and defaults to
the nccl backend. On a machine without CUDA this shim takes the world size from torchrun's
WORLD_SIZE, uses device 0, the gloo backend, and fairseq's own legacy_ddp wrapper (torch's
DistributedDataParallel is given a CUDA device id by fairseq). With CUDA present it changes nothing.
"""
import logging
import os

import torch
from fairseq.distributed import utils as distributed_utils

logger = logging.getLogger(__name__)
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _infer_init_method_on_cpu(cfg, force_distributed=False):
    if torch.cuda.device_count() == 0 and all(name in os.environ for name in TORCHRUN_VARIABLES):
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        if cfg.distributed_backend == "nccl":
            cfg.distributed_backend = "gloo"
        if cfg.ddp_backend in ("c10d", "pytorch_ddp"):
            cfg.ddp_backend = "legacy_ddp"
        if cfg.distributed_world_size > 1 and cfg.distributed_init_method is None:
            cfg.distributed_init_method = "env://"
            cfg.distributed_rank = int(os.environ["RANK"])
            cfg.device_id = 0
            cfg.distributed_no_spawn = True
            logger.info("CPU data parallel: rank %d of %d, %s backend, %s", cfg.distributed_rank,
                        cfg.distributed_world_size, cfg.distributed_backend, cfg.ddp_backend)
            return
    return _fairseq_infer_init_method(cfg, force_distributed)


if distributed_utils.infer_init_method is not _infer_init_method_on_cpu:
    _fairseq_infer_init_method = distributed_utils.infer_init_method
    distributed_utils.infer_init_method = _infer_init_method_on_cpu
