"""Entry points: each composes a config (Hydra) and hands it to `slmlab.runs`, `slmlab.eval` or
`slmlab.bench`. Nothing in slmlab imports them."""
