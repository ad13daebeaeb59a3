# Evaluates ../module.nix without nixpkgs (no network in CI): a minimal
# stand-in for the parts of `lib` and `pkgs` the module uses, an enabled
# agent and master, and the resulting settings that matter. Run:
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix
# (tests/tests/fleetops.rs checks the output). It proves the module
# evaluates and wires ExecStart, user, UID, linger, subuids, doas and
# resolvers as documented; it does not type-check options like the real
# NixOS module system would.
let
  lib = {
    mkEnableOption = d: { _type = "option"; default = false; description = "Whether to enable ${d}."; };
    mkOption = a: a // { _type = "option"; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkAfter = v: v;
    literalExpression = s: s;
    types = {
      package = "package"; path = "path"; str = "str"; int = "int"; bool = "bool";
      listOf = t: "listOf ${t}";
    };
  };
  pkgs = {
    formats.toml = { }: { type = "toml"; generate = name: value: "/nix/store/generated-${name}"; };
    stdenv.hostPlatform.system = "x86_64-linux";
    bashInteractive = "/nix/store/bash";
  };
  self.packages.x86_64-linux.mcp = "/nix/store/mcp";
  module = import ../module.nix { inherit self; };
  # Option defaults, the way the module system would fill them in.
  defaults = opts: builtins.mapAttrs (_: o: o.default) opts;
  firstPass = module { config = { }; inherit lib pkgs; };
  config.services = {
    mcp-agent = defaults firstPass.options.services.mcp-agent // {
      enable = true;
      fallbackResolvers = [ "9.9.9.9" ];
    };
    mcp-master = defaults firstPass.options.services.mcp-master // { enable = true; };
  };
  m = module { inherit config lib pkgs; };
  parts = m.config.contents;
  users = (builtins.elemAt parts 0).content;
  agent = (builtins.elemAt parts 1).content;
  master = (builtins.elemAt parts 2).content;
  unit = agent.systemd.services.mcp-agent;
in
{
  agentOptions = builtins.attrNames m.options.services.mcp-agent;
  masterOptions = builtins.attrNames m.options.services.mcp-master;
  uid = users.users.users.mcp.uid;
  linger = users.users.users.mcp.linger;
  subUid = users.users.users.mcp.subUidRanges;
  execStart = unit.serviceConfig.ExecStart;
  user = unit.serviceConfig.User;
  requires = unit.requires;
  noNewPrivileges = unit.serviceConfig.NoNewPrivileges;
  protectSystem = unit.serviceConfig.ProtectSystem;
  readWritePaths = unit.serviceConfig.ReadWritePaths;
  killMode = unit.serviceConfig.KillMode;
  xdgRuntimeDir = unit.environment.XDG_RUNTIME_DIR;
  doas = agent.security.doas.content.extraRules;
  nameservers = agent.networking.nameservers;
  masterExecStart = master.systemd.services.mcp-master.serviceConfig.ExecStart;
}
