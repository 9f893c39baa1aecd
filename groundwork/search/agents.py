"""The two learning agents, small and hand-written (a framework would be harder to read than they are):

  ddpg       value-based, as AMC: an actor proposes a layer's share, a critic learns what that share is worth
             from a replay buffer, and the actor follows the critic's gradient; exploration is truncated-normal
             noise around the actor's proposal that decays episode by episode, to a floor
  reinforce  policy-based: a Gaussian policy over the share, moved along the log-likelihood of each episode's
             actions in proportion to how much better than usual the episode scored

Both see the reward of a whole episode at its end (AMC gives it to every step), minus a moving-average baseline
so that "better than usual" has a sign. With a terminal reward and discount 1 the return of every step is that
reward, so DDPG's critic regresses on it directly (a Monte-Carlo target): no bootstrapping, no target networks.
DDPG stores each step with its episode's raw reward in a bounded replay buffer (the last `replay_size` steps,
AMC's 100 episodes of this model's five layers) and subtracts the baseline when it samples a batch, the moving
average of the batches' mean rewards, as AMC and HAQ do: a target is then always relative to the current
baseline, never to the one of the episode that stored it.
Both propose a point of the range the environment allows (the layer's lowest share up to the action wall), so
the critic is never asked about a share the wall would have clipped. Both are seeded and deterministic on the CPU.

DDPG's defaults are AMC's learning rates (actor 1e-4, critic 1e-3) and noise (0.5, decaying); the noise floor
(0.05) and the slower baseline (weight 0.9 on the past, AMC's is 0.5) were chosen on this project's model at a
25% budget, seeds 0-2 (bench/RESULTS.md): at AMC's baseline and without a floor, the actor often settled on a
poor policy with too little noise left to leave it. REINFORCE's learning rate (1e-2) was chosen the same way
(3e-3 and 1e-3 learnt too little in 250 episodes to beat random search).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from groundwork.errors import TrainingDiverged


@dataclass(frozen=True)
class Step:
    """One decision: the layer's state, the share the agent proposed, the share the environment took, and the
    range it allowed (the layer's lowest share and the action wall)."""

    state: np.ndarray
    proposed: float
    taken: float
    low: float
    high: float


class Transition(NamedTuple):
    """What DDPG's replay buffer keeps of a step: the state, the share taken, the allowed range, and the raw
    reward of its episode."""

    state: np.ndarray
    taken: float
    low: float
    high: float
    reward: float


class Agent(Protocol):
    """What the search loop asks of an agent."""

    def act(self, state: np.ndarray, low: float, high: float) -> float:
        """The share to propose for the layer `state` describes, in [low, high]."""
        ...

    def learn(self, steps: Sequence[Step], reward: float, *, explored: bool) -> None:
        """Take in one finished episode; `explored` marks a warm-up episode of random actions."""
        ...


class MovingAverage:
    """An exponential moving average, `weight` on the past."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = weight
        self.value: float | None = None

    def update(self, value: float) -> None:
        """Take in one more value."""
        self.value = value if self.value is None else self.weight * self.value + (1 - self.weight) * value

    def advantage(self, reward: float) -> float:
        """`reward` minus the average of the rewards before it (0 for the first), then taken in."""
        advantage = 0.0 if self.value is None else reward - self.value
        self.update(reward)
        return advantage


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


def truncated_normal(rng: np.random.Generator, mean: float, sigma: float, low: float, high: float) -> float:
    """A draw from N(mean, sigma) truncated to [low, high] (by rejection; clipped if rejection keeps failing)."""
    for _ in range(100):
        value = rng.normal(mean, sigma)
        if low <= value <= high:
            return float(value)
    return float(np.clip(mean, low, high))


class DDPG:
    """Actor-critic over one continuous action, as AMC configures it (hidden layers, learning rates, noise)."""

    def __init__(self, state_size: int, *, seed: int, hidden: int = 64, actor_lr: float = 1e-4,
                 critic_lr: float = 1e-3, batch_size: int = 64, noise: float = 0.5, noise_decay: float = 0.97,
                 min_noise: float = 0.05, baseline_weight: float = 0.9, replay_size: int = 500) -> None:
        with torch.random.fork_rng():  # the networks' initial weights from this seed, the global RNG untouched
            torch.manual_seed(seed)
            self.actor = nn.Sequential(_mlp(state_size, hidden, 1), nn.Sigmoid())
            self.critic = _mlp(state_size + 1, hidden, 1)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size
        self.noise, self.noise_decay, self.min_noise = noise, noise_decay, min_noise
        self.baseline = MovingAverage(baseline_weight)
        self.replay: deque[Transition] = deque(maxlen=replay_size)
        self.learnt_episodes = 0

    def act(self, state: np.ndarray, low: float, high: float) -> float:
        # the actor proposes a point of the allowed range: the critic then judges only shares of the kind it has
        # seen taken, never a share beyond the wall that the environment would have clipped (left free, the actor
        # climbs the critic's extrapolation there and every layer ends up taking the whole wall)
        with torch.no_grad():
            mean = low + (high - low) * float(self.actor(torch.from_numpy(state)[None]))
        sigma = max(self.min_noise, self.noise * self.noise_decay ** self.learnt_episodes)
        return truncated_normal(self.rng, mean, sigma, low, high)

    def learn(self, steps: Sequence[Step], reward: float, *, explored: bool) -> None:
        self.replay.extend(Transition(step.state, step.taken, step.low, step.high, reward) for step in steps)
        if explored:
            return
        for _ in range(len(steps)):  # one update per decision taken, as AMC
            self._update()
        self.learnt_episodes += 1

    def _update(self) -> None:
        picked = [self.replay[i] for i in self.rng.integers(len(self.replay),
                                                            size=min(self.batch_size, len(self.replay)))]
        states = torch.from_numpy(np.stack([sample.state for sample in picked]))
        actions = torch.tensor([[sample.taken] for sample in picked], dtype=torch.float32)
        rewards = np.array([sample.reward for sample in picked])
        self.baseline.update(float(rewards.mean()))
        targets = torch.tensor(rewards - self.baseline.value, dtype=torch.float32)[:, None]
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat([states, actions], 1)), targets)
        if not torch.isfinite(critic_loss):
            raise TrainingDiverged(f"the DDPG critic's loss became {critic_loss.item()}: the search stopped "
                                   "(lower its learning rate)")
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        low, high = torch.tensor([[sample.low, sample.high] for sample in picked], dtype=torch.float32).unbind(1)
        proposed = low[:, None] + (high - low)[:, None] * self.actor(states)
        actor_loss = -self.critic(torch.cat([states, proposed], 1)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()


class Reinforce:
    """A Gaussian policy over the share (a network for the mean, a learnt spread), updated once per episode."""

    def __init__(self, state_size: int, *, seed: int, hidden: int = 64, lr: float = 1e-2,
                 initial_sigma: float = 0.3, min_sigma: float = 0.02) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.mean = nn.Sequential(_mlp(state_size, hidden, 1), nn.Sigmoid())
        self.log_sigma = nn.Parameter(torch.tensor(float(np.log(initial_sigma))))
        self.optimizer = torch.optim.Adam([*self.mean.parameters(), self.log_sigma], lr=lr)
        self.min_log_sigma = float(np.log(min_sigma))
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline = MovingAverage()
        self.spread = MovingAverage(weight=0.9)  # of squared advantages: scales updates to the reward's noise

    def _sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(min=self.min_log_sigma).exp()

    def _means(self, states: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return low + (high - low) * self.mean(states)[:, 0]  # a point of the allowed range, as DDPG's actor

    def act(self, state: np.ndarray, low: float, high: float) -> float:
        with torch.no_grad():
            mean = self._means(torch.from_numpy(state)[None], torch.tensor([low]), torch.tensor([high]))[0]
            return float(mean + self._sigma() * torch.randn((), generator=self.generator))

    def learn(self, steps: Sequence[Step], reward: float, *, explored: bool) -> None:
        advantage = self.baseline.advantage(reward)
        self.spread.update(advantage**2)
        if explored or not advantage:
            return
        scale = float(np.sqrt(self.spread.value))  # > 0: this advantage is in it
        states = torch.from_numpy(np.stack([step.state for step in steps]))
        proposed = torch.tensor([step.proposed for step in steps])
        low, high = torch.tensor([[step.low, step.high] for step in steps]).unbind(1)
        means = self._means(states, low, high)
        log_likelihood = torch.distributions.Normal(means, self._sigma()).log_prob(proposed).sum()
        loss = -(advantage / scale) * log_likelihood
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the REINFORCE loss became {loss.item()}: the search stopped")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def make_agent(name: str, state_size: int, *, seed: int) -> Agent:
    """The agent params name: `ddpg` (value-based) or `reinforce` (policy-based)."""
    if name == "ddpg":
        return DDPG(state_size, seed=seed)
    if name == "reinforce":
        return Reinforce(state_size, seed=seed)
    raise ValueError(f"unknown search agent {name!r}: ddpg or reinforce")
