"""Exploration policies for collecting real CarRacing-v3 rollouts.

A policy is a small object with `reset(rng, env)` (draw this episode's parameters from `rng`)
and `act(obs, env) -> float32[3]` (steer [-1, 1], gas [0, 1], brake [0, 1]); given the same
episode seed it acts the same. `params` holds the episode's parameters (JSON-able), recorded in
each shard. `make_policy(spec)` builds one from a registry name or an agent file, or wraps a
callable given as 'package.module:factory' (a zero-argument callable returning `obs -> action`).

    ou          temporally-correlated (Ornstein-Uhlenbeck) steering and throttle, gas-biased
    controller  random linear map from a coarse road mask of the frame to actions (World Models)
    track       PRIVILEGED noisy track-follower with off-road excursions (data only, never an agent)
    track-perturbed  PRIVILEGED track-follower whose actions are overridden in random segments
                by state-independent ones (data only), so the data shows what each action does
    mix         per episode, one of ou, controller, track by weight (the default: 70% track, 15% each other)
    random      per episode, ou or controller (half each): the non-privileged data regime
    PATH.zip | PATH.npz  a dream-trained agent (SB3 or controller) with perturbed segments as exploration

PRIVILEGED policies' rollouts train the VAE but not the MDN-RNN (`train.mdnrnn --privileged-data`).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

import gymnasium as gym
import numpy as np

from dreamenv.world_model import ACTION_HIGH, ACTION_LOW


def to_action(steer: float, gas: float, brake: float) -> np.ndarray:
    """Clip into CarRacing's action space -> float32 [3]."""
    return np.clip(np.array([steer, gas, brake], np.float32), ACTION_LOW, ACTION_HIGH)


class Policy:
    """Base: subclasses set `name`, draw `params` in reset and act from obs and env."""

    name = "policy"
    privileged = False  # reads the simulator's state: its data is kept out of MDN-RNN training by default

    def __init__(self):
        self.params: dict = {}

    def reset(self, rng: np.random.Generator, env: gym.Env) -> None:
        """Start an episode; draw its parameters from rng."""

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        """obs: uint8 [96, 96, 3] (the raw observation) -> float32 [3]."""
        raise NotImplementedError


class OrnsteinUhlenbeck:
    """Mean-reverting noise: x += theta·(-x) + sigma·N(0, 1), per component."""

    def __init__(self, rng: np.random.Generator, theta: float, sigma: float, size: int):
        self.rng, self.theta, self.sigma = rng, theta, sigma
        self.x = np.zeros(size)

    def __call__(self) -> np.ndarray:
        self.x += -self.theta * self.x + self.sigma * self.rng.standard_normal(self.x.shape)
        return self.x


class OUPolicy(Policy):
    """Correlated random steering and throttle with a gas bias; brakes in rare short pulses."""

    name = "ou"

    def reset(self, rng, env):
        self.rng = rng
        self.params = {
            "theta": float(rng.uniform(0.05, 0.2)),
            "sigma": float(rng.uniform(0.1, 0.3)),
            "gas_bias": float(rng.uniform(0.2, 0.6)),
            "brake_prob": 0.01,
        }
        self.noise = OrnsteinUhlenbeck(rng, self.params["theta"], self.params["sigma"], 2)
        self.brake_left = 0

    def act(self, obs, env):
        steer, throttle = self.noise()
        if self.brake_left == 0 and self.rng.random() < self.params["brake_prob"]:
            self.brake_left = int(self.rng.integers(5, 16))
        if self.brake_left:
            self.brake_left -= 1
            return to_action(steer, 0.0, 0.6)
        return to_action(steer, self.params["gas_bias"] + throttle, 0.0)


def road_mask_features(obs: np.ndarray, rows: int = 4, cols: int = 6) -> np.ndarray:
    """Share of non-grass pixels per cell of a rows×cols grid over the view, in [-1, 1].

    obs: uint8 [96, 96, 3] -> float32 [rows·cols]. Grass is green (g > r + 50); the road,
    kerbs and car are not. The dashboard rows (84:) are dropped.
    """
    view = obs[:84].astype(np.int16)
    road = (view[..., 1] - view[..., 0] <= 50).astype(np.float32)  # [84, 96]
    cells = road.reshape(rows, 84 // rows, cols, 96 // cols).mean(axis=(1, 3))
    return (2.0 * cells - 1.0).ravel()


class RandomControllerPolicy(Policy):
    """A random linear controller fixed per episode, as in World Models' data collection.

    actions = W · [road-mask features, 1]; steer = tanh, gas = sigmoid-like, brake = clipped
    tanh, with a gas bias so that most controllers move the car.
    """

    name = "controller"
    n_features = 4 * 6 + 1

    def reset(self, rng, env):
        scale = float(rng.uniform(0.1, 0.6))
        self.weights = rng.normal(0.0, scale, (3, self.n_features))  # [3, F]
        self.params = {
            "weight_scale": scale,
            "gas_bias": float(rng.uniform(0.0, 1.5)),
            "brake_bias": float(rng.uniform(1.0, 2.0)),
        }

    def act(self, obs, env):
        features = np.append(road_mask_features(obs), 1.0)  # [F]
        steer, gas, brake = self.weights @ features
        return to_action(
            math.tanh(steer),
            (math.tanh(gas + self.params["gas_bias"]) + 1.0) / 2.0,
            math.tanh(brake - self.params["brake_bias"]),
        )


def _wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _bearing(vector: np.ndarray, heading: float) -> float:
    """Angle of a world vector [2] from the car's nose (hull angle `heading`), + to the right."""
    forward = -math.sin(heading) * vector[0] + math.cos(heading) * vector[1]
    right = math.cos(heading) * vector[0] + math.sin(heading) * vector[1]
    return math.atan2(right, forward)


class TrackFollowerPolicy(Policy):
    """PRIVILEGED: reads the simulator's track and car state; for data collection only.

    Pure pursuit toward a waypoint ahead (lookahead grows with speed), throttle toward a
    per-episode target speed that drops in bends, correlated steering/throttle noise, and
    occasional excursions: it tracks a line beside the road (off it) for a while, then
    returns, so the data shows grass and recoveries.
    """

    name = "track"
    privileged = True
    recovery_speed = 30.0  # on grass, slow to this before rejoining the road

    def reset(self, rng, env):
        track = env.unwrapped.track  # list of (alpha, beta, x, y)
        self.xy = np.array([(x, y) for _, _, x, y in track])  # [N, 2]
        self.beta = np.array([b for _, b, _, _ in track])  # [N]
        self.rng = rng
        self.params = {
            "target_speed": float(rng.uniform(60.0, 160.0)),
            "lookahead": float(rng.uniform(4.0, 8.0)),
            "steer_gain": float(rng.uniform(1.5, 3.0)),
            "noise": float(rng.uniform(0.0, 0.06)),
            "excursions_per_1000": float(rng.uniform(0.0, 4.0)),
        }
        self.noise = OrnsteinUhlenbeck(rng, 0.1, self.params["noise"], 2)
        self.excursion_left, self.offset = 0, 0.0

    def act(self, obs, env):
        car = env.unwrapped.car
        pos, heading = np.array(car.hull.position), car.hull.angle
        velocity = np.array(car.hull.linearVelocity)
        speed = float(np.hypot(*velocity))
        self._maybe_start_excursion()
        nearest = int(np.argmin(np.sum((self.xy - pos) ** 2, axis=1)))
        ahead = (nearest + int(self.params["lookahead"] + speed / 25.0)) % len(self.xy)
        steer = self._steer(pos, heading, ahead)
        bend = abs(_wrap_angle(self.beta[(nearest + 8) % len(self.xy)] - self.beta[nearest]))
        target = self.params["target_speed"] / (1.0 + 2.0 * bend)
        if not any(wheel.tiles for wheel in car.wheels):
            target = min(target, self.recovery_speed)
        # less gas when steering hard: the rear-wheel-drive car spins out under full throttle
        gas = min(0.05 * (target - speed), 1.0 - 0.7 * min(abs(steer), 1.0))
        slip = _bearing(velocity, heading)
        if speed > 5.0 and abs(slip) > 0.5:  # skidding: lift off and steer into the skid
            steer, gas = 1.5 * slip, 0.0
        noise_steer, noise_gas = self.noise()
        return to_action(steer + noise_steer, gas + noise_gas, 0.03 * (speed - target - 10.0))

    def _steer(self, pos: np.ndarray, heading: float, index: int) -> float:
        """Steer toward waypoint `index`, shifted sideways by the excursion offset."""
        beta = self.beta[index]
        goal = self.xy[index] + self.offset * np.array([math.cos(beta), math.sin(beta)])
        return self.params["steer_gain"] * _bearing(goal - pos, heading)

    def _maybe_start_excursion(self) -> None:
        """Count down the current excursion or start one at the episode's rate."""
        if self.excursion_left:
            self.excursion_left -= 1
            if not self.excursion_left:
                self.offset = 0.0
        elif self.rng.random() < self.params["excursions_per_1000"] / 1000.0:
            self.excursion_left = int(self.rng.integers(30, 100))
            self.offset = float(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(8.0, 25.0))


class SegmentPerturbation:
    """Overrides a policy's actions in random segments of 10-50 steps by state-independent ones.

    Per segment, with probability `share`, the action is replaced by one drawn independently of
    the state: a held random steer, coasting, braking, full throttle, or all three at random;
    otherwise the policy's own action stays. `__call__(action)` -> the action to take.
    """

    modes = ("steer", "coast", "brake", "throttle", "random")

    def __init__(self, rng: np.random.Generator, share: float):
        self.rng, self.share = rng, share
        self.segment_left, self.override = 0, None

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if not self.segment_left:
            self.segment_left = int(self.rng.integers(10, 51))
            perturb = self.rng.random() < self.share
            self.override = self._draw_override() if perturb else None
        self.segment_left -= 1
        if self.override is None:
            return action
        steer, gas, brake = (action[i] if v is None else v for i, v in enumerate(self.override))
        return to_action(steer, gas, brake)

    def _draw_override(self) -> tuple:
        """(steer, gas, brake), None where the policy's own action stays."""
        u = lambda lo, hi: float(self.rng.uniform(lo, hi))
        mode = self.modes[int(self.rng.integers(len(self.modes)))]
        return {"steer": (u(-1, 1), None, None), "coast": (None, 0.0, 0.0), "brake": (None, 0.0, u(0.2, 1.0)),
                "throttle": (None, 1.0, 0.0), "random": (u(-1, 1), u(0, 1), u(0, 1) ** 2)}[mode]


class PerturbedTrackPolicy(TrackFollowerPolicy):
    """PRIVILEGED (data only): the track follower under a `SegmentPerturbation` (20-50 % of segments).

    A follower's actions are a function of what it sees, so a model trained on its data cannot
    tell what an action does from what the road ahead implies (measured: a dream trained on
    70 % follower data gave braking as much return as throttle). The perturbed segments show it;
    the follower then recovers, so the data also shows the way back to the road.
    """

    name = "track-perturbed"

    def reset(self, rng, env):
        super().reset(rng, env)
        self.params["perturbed_share"] = float(rng.uniform(0.2, 0.5))
        self.perturb = SegmentPerturbation(rng, self.params["perturbed_share"])

    def act(self, obs, env):
        return self.perturb(super().act(obs, env))


class AgentPolicy(Policy):
    """A dream-trained agent driving the real car, for iterative training (not privileged).

    The agent (an SB3 .zip or a controller .npz, see train/evaluate.py) reads the raw frames
    through `model` exactly as on LatentCarRacing-v0; a `SegmentPerturbation` over 10-30 % of
    the segments (per episode) is the exploration noise, so the new data shows what actions do
    in the states this agent reaches.
    """

    name = "agent"

    def __init__(self, path: str, model=None):
        super().__init__()
        from dreamenv.envs.latent import RealObserver
        from dreamenv.model import load_model
        from train.evaluate import load_policy  # train.evaluate imports dreamenv's envs

        if str(path).endswith(".zip"):
            import torch

            torch.set_num_threads(1)  # one worker per core
        self.path, world = str(path), load_model(model)
        self.agent = load_policy(path, world)
        self.observer = RealObserver(world, self.agent.obs)

    def reset(self, rng, env):
        self.params = {"agent": self.path, "perturbed_share": float(rng.uniform(0.1, 0.3))}
        self.perturb = SegmentPerturbation(rng, self.params["perturbed_share"])
        self.last = None  # the last action

    def act(self, obs, env):
        seen = self.observer.first(obs) if self.last is None else self.observer.next(self.last, obs)
        steer, gas, brake = self.agent.act(seen[None])[0]
        self.last = self.perturb(to_action(steer, gas, brake))
        return self.last


class CallablePolicy(Policy):
    """Wraps any `obs -> action` callable (e.g. a trained agent) as a policy."""

    name = "agent"

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str = "agent"):
        super().__init__()
        self.fn, self.name = fn, name

    def act(self, obs, env):
        action = np.asarray(self.fn(obs), np.float32)
        if action.shape != (3,):
            raise ValueError(
                f"train/policies.py: policy '{self.name}' returned an action of shape "
                f"{action.shape}, expected (3,) (steer, gas, brake)"
            )
        return np.clip(action, ACTION_LOW, ACTION_HIGH)


class MixPolicy(Policy):
    """Per episode, picks one policy by weight; its parameters are recorded under `choice`."""

    name = "mix"
    weights = {"track": 0.7, "ou": 0.15, "controller": 0.15}

    def reset(self, rng, env):
        names = list(self.weights)
        p = np.array([self.weights[n] for n in names])
        self.inner = POLICIES[names[rng.choice(len(names), p=p / p.sum())]]()
        self.inner.reset(rng, env)
        self.params = {"choice": self.inner.name, **self.inner.params}

    def act(self, obs, env):
        return self.inner.act(obs, env)


class RandomMixPolicy(MixPolicy):
    """NOT privileged: per episode, the OU driver or a random controller (half each)."""

    name = "random"
    weights = {"ou": 0.5, "controller": 0.5}


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (OUPolicy, RandomControllerPolicy, TrackFollowerPolicy, PerturbedTrackPolicy, MixPolicy,
                              RandomMixPolicy)
}


PRIVILEGED = frozenset(name for name, cls in POLICIES.items() if cls.privileged)
"""Policies that read the simulator's track: their actions tell what the road ahead does, so a model
trained on them learns that the road follows the car (docs/RESULTS.md, "Privileged data")."""

AGENT_SUFFIXES = (".zip", ".npz")


def episode_policy(meta: dict) -> str:
    """The policy that drove an episode, from its shard meta (or manifest entry): the one `mix` drew,
    "agent" for an agent file, else the policy's name."""
    policy = str(meta.get("policy", "unknown"))
    if policy.endswith(AGENT_SUFFIXES):
        return "agent"
    return str((meta.get("params") or {}).get("choice", policy))


def make_policy(spec: str, model=None) -> Policy:
    """A registry name (see POLICIES), an agent file (.zip / .npz, reading through bundle `model`,
    default the shipped one), or 'package.module:factory' for any obs -> action callable."""
    if spec in POLICIES:
        return POLICIES[spec]()
    if spec.endswith(AGENT_SUFFIXES):
        return AgentPolicy(spec, model)
    if ":" in spec:
        module, _, attr = spec.partition(":")
        return CallablePolicy(getattr(importlib.import_module(module), attr)(), name=spec)
    raise ValueError(
        f"train/policies.py: unknown policy '{spec}'; expected one of {sorted(POLICIES)}, an agent file "
        f"(.zip / .npz) or 'package.module:factory' returning an obs -> action callable"
    )
