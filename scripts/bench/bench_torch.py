"""The benchmark's models in PyTorch: nn modules (nn.GRU), torch.optim.Adam with its defaults.

scripts/bench/benchmark.py imports this file when torch is installed; it is not a script of its own.
The modules start from minivae's initial weights, copied (minivae stores a weight matrix as
(n_in, n_out), torch as (n_out, n_in)). On gru_large both GRUs run over packed sequences and
the vocabulary layer sees the real tokens only (the packed decoder outputs), as PyTorch users write it.
"""
import numpy as np


def train(workload, job, model):
    """A step function (batch -> float32 loss) training `model`'s initial weights, copied."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(job["threads"])
    nn, T = torch.nn, torch.from_numpy

    def load(module, weights):
        with torch.no_grad():
            for param, array in zip(module.parameters(), weights):
                param.copy_(T(np.ascontiguousarray(array.T if array.ndim == 2 else array)))

    if workload == "mlp":
        weights = [p.data for p in model.parameters()]  # W1 b1 W2 b2 (encoder), W3 b3 W4 b4 (decoder)
        net = nn.ModuleList([nn.Linear(*W.shape) for W in weights[::2]])
        load(net, weights)
        x, d = T(job["x"]), weights[4].shape[0]

        def objective(batch):
            idx, eps = batch
            xb = x[T(idx)]
            stats = net[1](F.relu(net[0](xb)))
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + torch.exp(0.5 * logvar) * T(eps)
            logits = net[3](F.relu(net[2](z)))
            rec = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * torch.sum(mu * mu + logvar.exp() - logvar - 1)
            return (rec + kl) / len(idx)
    else:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        p = {n: q.data for n, q in model.named_parameters()}
        (V, E), (H, d) = p["embedding.W"].shape, p["to_latent.W"].shape
        d //= 2
        net = nn.ModuleDict({"embedding": nn.Embedding(V, E), "encoder": nn.GRU(E, H, batch_first=True),
                             "to_latent": nn.Linear(H, 2 * d), "to_state": nn.Linear(d, H),
                             "decoder": nn.GRU(E, H, batch_first=True), "to_vocab": nn.Linear(H, V)})
        with torch.no_grad():
            net["embedding"].weight.copy_(T(p["embedding.W"]))
        for name in ("encoder", "decoder"):  # torch's order: weight_ih, weight_hh, bias_ih, bias_hh
            load(net[name], [p[f"{name}.cell.{k}"] for k in ("W_x", "W_h", "b_x", "b_h")])
        for name in ("to_latent", "to_state", "to_vocab"):
            load(net[name], [p[f"{name}.W"], p[f"{name}.b"]])

        packed = job["torch_gru"] == "packed" or workload == "gru_large"

        def run_gru(gru, x, lengths, h0=None):
            """Outputs (B, T, H), or a PackedSequence on gru_large, and each sentence's last state (B, H)."""
            if packed:
                out, h = gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), h0)
                if workload == "gru_large":  # its real tokens alone go on to the vocabulary layer
                    return out, h[0]
                return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h[0]
            out, _ = gru(x, h0)  # padding follows each sentence, so it cannot change earlier states
            return out, out[torch.arange(len(lengths)), lengths - 1]

        def objective(b):
            B, T1 = b["dec_in"].shape
            lengths = T(b["lengths"])
            _, h = run_gru(net["encoder"], net["embedding"](T(b["enc_in"])), lengths)     # (B, H)
            stats = net["to_latent"](h)
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + torch.exp(0.5 * logvar) * T(b["eps"])
            h0 = torch.tanh(net["to_state"](z))[None]                           # (1, B, H)
            out, _ = run_gru(net["decoder"], net["embedding"](T(b["dec_in"])), lengths + 1, h0)
            kl = 0.5 * torch.sum(mu * mu + logvar.exp() - logvar - 1)
            if workload == "gru_large":  # (tokens, H) -> (tokens, V): the packed targets, no padding
                target = pack_padded_sequence(T(b["dec_target"]), lengths + 1, batch_first=True, enforce_sorted=False)
                return (F.cross_entropy(net["to_vocab"](out.data), target.data, reduction="sum") + kl) / B
            logits = net["to_vocab"](out)                                        # (B, T+1, V)
            nll = F.cross_entropy(logits.reshape(B * T1, V), T(b["dec_target"]).reshape(-1),
                                  reduction="none").reshape(B, T1)
            return (torch.sum(nll * T(b["mask"])) + kl) / B

    optimizer = torch.optim.Adam(net.parameters(), lr=job["lr"])

    def step(batch):
        loss = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach().numpy()
    return step
