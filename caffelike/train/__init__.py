"""Training: the solvers and their Caffe update arithmetic (`solver`, `updates`), lr policies (`lr_policy`),
snapshots and resume (`snapshot`), mixed precision (`precision`), SIGINT/SIGHUP effects (`signals`), and the
meters behind the displayed loss (`meters`)."""
