"""The two learning agents, small and hand-written (a framework would be harder to read than they are):

  ddpg       value-based, as AMC: an actor proposes a layer's share, a critic learns what that share is worth
             from a replay buffer, and the actor follows the critic's gradient; exploration is truncated-normal
             noise around the actor's proposal that decays episode by episode
  reinforce  policy-based: a Gaussian policy over the share, moved along the log-likelihood of each episode's
             actions in proportion to how much better than usual the episode scored

Both see the reward of a whole episode at its end (AMC gives it to every step), minus a moving-average baseline
so that "better than usual" has a sign. With a terminal reward and discount 1 the return of every step is that
reward, so DDPG's critic regresses on it directly (a Monte-Carlo target): no bootstrapping, no target networks.
Both are seeded and deterministic on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from groundwork.errors import TrainingDiverged


@dataclass(frozen=True)
class Step:
    """One decision: the layer's state, the share the agent proposed, and the share the environment took."""

    state: np.ndarray
    proposed: float
    taken: float


class Agent(Protocol):
    """What the search loop asks of an agent."""

    def act(self, state: np.ndarray, low: float, high: float, episode: int) -> float:
        """The share to propose for the layer `state` describes, in [low, high]."""
        ...

    def learn(self, steps: Sequence[Step], reward: float, episode: int, *, explored: bool) -> None:
        """Take in one finished episode; `explored` marks a warm-up episode of random actions."""
        ...


class MovingAverage:
    """An exponential moving average; as the reward baseline, AMC's weight 0.5 on the past."""

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

    def __init__(self, state_size: int, *, seed: int, hidden: int = 64, actor_lr: float = 1e-3,
                 critic_lr: float = 1e-3, batch_size: int = 64, noise: float = 0.5, noise_decay: float = 0.97,
                 updates_per_episode: int | None = None) -> None:
        with torch.random.fork_rng():  # the networks' initial weights from this seed, the global RNG untouched
            torch.manual_seed(seed)
            self.actor = nn.Sequential(_mlp(state_size, hidden, 1), nn.Sigmoid())
            self.critic = _mlp(state_size + 1, hidden, 1)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size
        self.noise, self.noise_decay = noise, noise_decay
        self.updates_per_episode = updates_per_episode
        self.baseline = MovingAverage()
        self.states: list[np.ndarray] = []
        self.actions: list[float] = []
        self.targets: list[float] = []
        self.learnt_episodes = 0

    def act(self, state: np.ndarray, low: float, high: float, episode: int) -> float:
        with torch.no_grad():
            mean = float(self.actor(torch.from_numpy(state)[None]))
        sigma = self.noise * self.noise_decay ** self.learnt_episodes
        return truncated_normal(self.rng, mean, sigma, low, high)

    def learn(self, steps: Sequence[Step], reward: float, episode: int, *, explored: bool) -> None:
        advantage = self.baseline.advantage(reward)
        for step in steps:
            self.states.append(step.state)
            self.actions.append(step.taken)
            self.targets.append(advantage)
        if explored:
            return
        for _ in range(self.updates_per_episode or len(steps)):
            self._update()
        self.learnt_episodes += 1

    def _update(self) -> None:
        picked = self.rng.integers(len(self.states), size=min(self.batch_size, len(self.states)))
        states = torch.from_numpy(np.stack([self.states[i] for i in picked]))
        actions = torch.tensor([[self.actions[i]] for i in picked], dtype=torch.float32)
        targets = torch.tensor([[self.targets[i]] for i in picked], dtype=torch.float32)
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat([states, actions], 1)), targets)
        if not torch.isfinite(critic_loss):
            raise TrainingDiverged(f"the DDPG critic's loss became {critic_loss.item()}: the search stopped "
                                   "(lower its learning rate)")
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        actor_loss = -self.critic(torch.cat([states, self.actor(states)], 1)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()


class Reinforce:
    """A Gaussian policy over the share (a network for the mean, a learnt spread), updated once per episode."""

    def __init__(self, state_size: int, *, seed: int, hidden: int = 64, lr: float = 3e-3,
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

    def act(self, state: np.ndarray, low: float, high: float, episode: int) -> float:
        with torch.no_grad():
            mean = self.mean(torch.from_numpy(state)[None])[0, 0]
            return float(mean + self._sigma() * torch.randn((), generator=self.generator))

    def learn(self, steps: Sequence[Step], reward: float, episode: int, *, explored: bool) -> None:
        advantage = self.baseline.advantage(reward)
        self.spread.update(advantage**2)
        if explored or not advantage:
            return
        scale = float(np.sqrt(self.spread.value))  # > 0: this advantage is in it
        states = torch.from_numpy(np.stack([step.state for step in steps]))
        proposed = torch.tensor([step.proposed for step in steps])
        log_likelihood = torch.distributions.Normal(self.mean(states)[:, 0], self._sigma()).log_prob(proposed).sum()
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
