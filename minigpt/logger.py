"""The run's logger: W&B (online when wandb finds credentials, offline in the run directory otherwise), CSV, or none.

A run directory is one W&B run: its id is kept in `wandb/run-id`, and every resume logs into that run again.
"""

from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from minigpt.errors import UserError
from minigpt.files import atomic_write

RUN_ID_FILE = "run-id"  # in the run directory's wandb/ folder, beside the runs wandb writes


def wandb_mode() -> Literal["online", "offline", "disabled"]:
    """What `wandb.init` would do here, decided without a prompt and without the network.

    wandb's settings resolve WANDB_MODE and WANDB_BASE_URL with the settings files (`wandb offline`, `wandb login
    --host`) as wandb.init does; wandb's own credential lookup then looks, for that host, at WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, the netrc file (~/.netrc or $NETRC) and the settings files' api_key. Online when it
    finds credentials: nothing is verified with the server here, wandb.init does that.
    """
    from wandb.errors import AuthenticationError

    # wandb has no public lookup that neither prompts nor prints (wandb.login asks the server who is logged in, and
    # wandb.setup() starts wandb's service process): its settings singleton and its session authentication, with
    # the prompt turned off, are what wandb.init itself consults first.
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    if settings.mode == "disabled":
        return "disabled"
    if settings.mode in ("offline", "dryrun"):
        return "offline"
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    try:
        credentials = wbauth.authenticate_session(host=host, source="minigpt", prompt=False)
    except AuthenticationError as e:
        raise UserError(f"W&B credentials for {host.url}: {e}; fix them, or set WANDB_MODE=offline") from None
    return "online" if credentials else "offline"


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, with three differences:

    - the run directory exists before wandb starts (wandb looks for the git repository from it, and warns that a
      directory that does not exist yet has no git root);
    - no `anonymous` argument reaches wandb.init (Lightning passes anonymous=None; wandb warns the setting has no
      effect);
    - the run's id is written to id_file once the W&B run has started, so that a resume finds it.
    """

    def __init__(self, id_file: Path, **kwargs):
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)
        self._id_file = id_file

    @property
    def experiment(self):
        starting = self._experiment is None and rank_zero_only.rank == 0  # other DDP processes start no run
        if starting:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        experiment = super().experiment
        # Written once the run has started, not when the logger is made: a fresh run that fails before it starts
        # leaves no run directory (minigpt.cli.fit), and one started in a reused directory replaces the old id.
        if starting:
            with atomic_write(self._id_file, "w", encoding="utf-8") as f:
                f.write(experiment.id)
        return experiment


def make_logger(kind: str | bool, run_dir: Path, resuming: bool) -> Logger | bool:
    """The logger `--logger kind` asks for, writing into run_dir; resuming continues the run directory's W&B run."""
    if kind is False:
        return False
    if kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="", version="")
    import wandb

    mode = wandb_mode()
    if mode == "disabled":  # WANDB_MODE=disabled: wandb would log nothing anywhere
        return False
    if mode == "offline":
        print(
            f"W&B: not logged in, logging offline to {run_dir / 'wandb'}; upload later with "
            f"`wandb sync {run_dir / 'wandb'}/offline-run-*`"
        )
    # An absolute directory: W&B's service process resolves paths against its own working directory. The mode goes in
    # the run's settings: wandb's settings singleton has read the environment already. Offline, the line above replaces
    # wandb's own banner (silent); online, wandb still prints where the run is (quiet: no closing table of every
    # metric, the run's own report follows).
    settings = wandb.Settings(mode="offline", silent=True) if mode == "offline" else wandb.Settings(quiet=True)
    # A resume logs into the run its directory started (WandbLogger passes resume="allow"): online, wandb appends to
    # it; offline, wandb writes one more offline-run-* folder with the same id, and `wandb sync` uploads those folders
    # into that one run, in the order they were started. A fresh run, in a new directory or a reused one, is a new run
    # (id None: wandb makes one up).
    id_file = run_dir / "wandb" / RUN_ID_FILE
    run_id = id_file.read_text(encoding="utf-8") if resuming and id_file.is_file() else None
    return RunWandbLogger(
        id_file=id_file, save_dir=str(run_dir.resolve()), project="minigpt", name=run_dir.name, id=run_id,
        offline=mode == "offline", settings=settings,
    )  # fmt: skip
