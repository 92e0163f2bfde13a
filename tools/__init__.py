"""Commands that turn finished runs into the paper's tables and figures, and run sweeps.

    python -m tools.tables RUNS [--out DIR | --print] [--split val] [--ci]   Tables 1-4 (Markdown, CSV)
    python -m tools.flips RUN [RUN ...] --out DIR [--baseline RUN]    which samples flip, to what, margins,
                                                                      groups over seeds, bootstrap intervals,
                                                                      McNemar tests (Holm), flips.csv
    python -m tools.evaluate --old-ckpt A --ckpt B --output-dir DIR   score a checkpoint without training
    python -m tools.select_b SWEEP [--tolerance 1.0]                 choose b on validation metrics
    python -m tools.plots embeddings RUN [RUN ...] --out FIG.png      Figure 3 (--embed-dim 2 runs)
    python -m tools.plots b-sweep SWEEP --out FIG.png                 Figure 4
    tools/sweep_b.sh SWEEP [main.py flags]                            train MPT over a grid of b
    tools/train_ensemble.sh [train_new_model.py flags]                the ELODI ensemble members
    tools/gpu_check.sh [DATA_ROOT]                                    the GPU check (gpu_report.md)
    tools/slurm_torchrun.sbatch [script flags]                        torchrun on several SLURM nodes

Every command reads the files a run writes (results.json, predictions.npz, checkpoints; see
utils/outputs.py) and none imports a script.
"""
