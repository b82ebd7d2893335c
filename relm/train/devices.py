"""Processes and devices of a training run: ranks from torchrun or SLURM (DDP), the torch device, the AMP dtype."""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

AMP_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist:
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "127.0.0.1"


def dist_from_env() -> DistInfo:
    """torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM with more than one task (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID);
    anything else is a single process. For SLURM, MASTER_ADDR/MASTER_PORT are exported when missing."""
    env = os.environ
    if "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if ntasks > 1 and "SLURM_PROCID" in env:
        info = DistInfo(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", "0")))
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", str(10001 + int(env.get("SLURM_JOB_ID", "0")) % 10000))
        env.update(RANK=str(info.rank), WORLD_SIZE=str(info.world), LOCAL_RANK=str(info.local_rank))
        return info
    return DistInfo()


def choose_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("run.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if name != "cpu":
        raise ValueError(f"unknown run.device {name!r} (auto, cpu, cuda)")
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on GPUs that support it, fp16 on older GPUs, none on the CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in table:
        raise ValueError(f"unknown run.amp {amp!r} (auto, bf16, fp16, none)")
    return table[amp]


def setup(rc) -> tuple[DistInfo, torch.device, torch.dtype | None]:
    """From the run config: CPU threads, this process's rank (joins the process group when there are several),
    its device and AMP dtype."""
    if rc.threads > 0:
        torch.set_num_threads(rc.threads)
    info = dist_from_env()
    device = choose_device(rc.device, info.local_rank)
    if info.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=info.rank, world_size=info.world, timeout=datetime.timedelta(hours=2))
    return info, device, resolve_amp(rc.amp, device)
