"""PPO's shape: a rollout of a slow pure-Python environment with no-grad policy forwards, then epochs of
minibatch updates. Prints, per iteration, the optimizer steps it made and how long its rollout and its
updates took: ``ITER {"first_step": S, "steps": N, "rollout_s": R, "update_s": U}``."""

import argparse
import json
import math
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--iters", type=int, default=12)
parser.add_argument("--rollout", type=int, default=128)
parser.add_argument("--env-work", type=int, default=400, help="Python work per environment step")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
policy = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
value = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()], lr=3e-4)
state = [0.0] * 8


def env_step(action: int) -> float:
    """A simulator in pure Python, as many RL environments are."""
    total = 0.0
    for i in range(args.env_work):
        total += math.sin(i * 0.01 + state[i % 8])
    for i in range(8):
        state[i] = 0.9 * state[i] + 0.1 * (total % 1.0) + 0.01 * action
    return total % 1.0


steps = 0
for _ in range(args.iters):
    started = time.perf_counter()
    observations, actions, rewards = [], [], []
    with torch.no_grad():
        for _ in range(args.rollout):
            observation = torch.tensor(state)
            action = int(torch.distributions.Categorical(logits=policy(observation)).sample())
            observations.append(observation)
            actions.append(action)
            rewards.append(env_step(action))
    rolled = time.perf_counter()
    obs, act, ret = torch.stack(observations), torch.tensor(actions), torch.tensor(rewards)
    first = steps
    for _epoch in range(4):
        for batch in torch.randperm(args.rollout).split(32):
            logits, values = policy(obs[batch]), value(obs[batch]).squeeze(-1)
            log_prob = torch.log_softmax(logits, -1).gather(1, act[batch, None]).squeeze(1)
            loss = -(log_prob * (ret[batch] - values.detach())).mean() + 0.5 * (ret[batch] - values).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    done = time.perf_counter()
    line = {"first_step": first, "steps": steps - first, "rollout_s": rolled - started, "update_s": done - rolled}
    print("ITER " + json.dumps(line), flush=True)
