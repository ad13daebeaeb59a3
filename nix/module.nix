# NixOS module: services.mcp-agent and services.mcp-master.
#
# The agent runs as the rootless podman user `mcp` with the pinned UID 850
# (never change it: a rootless user's UID owns all its containers), with
# subordinate ID ranges, linger, and podman's API from the user's
# podman.socket. ExecStart is /srv/mcp/mcp-agent, not the store path, so
# `mcp agent upgrade` can replace the binary over SSH on NixOS as on Debian;
# activation installs the packaged binary only when none is there yet.
{ self }:
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkOption mkIf mkMerge types;
  agent = config.services.mcp-agent;
  master = config.services.mcp-master;
  toml = pkgs.formats.toml { };
  defaultPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.mcp;

  hardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictSUIDSGID = true;
    RestrictRealtime = true;
    RestrictNamespaces = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    UMask = "0077";
    LimitNOFILE = 65536;
    Restart = "on-failure";
    RestartSec = "5s";
    TimeoutStopSec = "30s";
  };

  commonOptions = name: dataDir: {
    enable = mkEnableOption "mcp ${name}";
    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = lib.literalExpression "mcp.packages.\${system}.mcp";
      description = "Package providing mcp-agent, mcp-master and mcp.";
    };
    dataDir = mkOption {
      type = types.path;
      default = dataDir;
      description = "State directory (owned by the mcp user, mode 0750).";
    };
    settings = mkOption {
      type = toml.type;
      default = { };
      description = ''
        Configuration as Nix attributes, rendered to TOML (see
        docs/configuration.md). Empty: use <dataDir>/mcp-${name}.toml as
        written by `mcp-${name} join` / `init`.
      '';
    };
  };

  configFile = cfg: name:
    if cfg.settings == { } then "${cfg.dataDir}/mcp-${name}.toml"
    else toml.generate "mcp-${name}.toml" cfg.settings;
in
{
  options.services.mcp-agent = commonOptions "agent" "/srv/mcp" // {
    user = mkOption {
      type = types.str;
      default = "mcp";
      description = "Rootless podman user the agent runs as.";
    };
    uid = mkOption {
      type = types.int;
      default = 850;
      description = "Its UID. Pinned: never change it once containers exist.";
    };
    subIdStart = mkOption {
      type = types.int;
      default = 100000;
      description = "First subordinate UID/GID of the user's 65536-range.";
    };
    restartWithDoas = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let the user run `doas systemctl restart mcp-agent` without a
        password: what `mcp agent upgrade` runs (nodes[].restart =
        "doas systemctl restart mcp-agent").
      '';
    };
    fallbackResolvers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "9.9.9.9" "1.1.1.1" ];
      description = ''
        Resolvers kept besides the internal DNS, so it is never the node's
        only resolver (appended to networking.nameservers and, with
        systemd-resolved, services.resolved.fallbackDns).
      '';
    };
  };

  options.services.mcp-master = commonOptions "master" "/srv/mcp-master";

  config = mkMerge [
    (mkIf (agent.enable || master.enable) {
      users.groups.${agent.user}.gid = agent.uid;
      users.users.${agent.user} = {
        uid = agent.uid;
        group = agent.user;
        isNormalUser = true;
        description = "mcp agent (rootless podman)";
        home = "/home/${agent.user}";
        createHome = true;
        # SSH upgrades log in as this user.
        shell = pkgs.bashInteractive;
        linger = true;
        subUidRanges = [{ startUid = agent.subIdStart; count = 65536; }];
        subGidRanges = [{ startGid = agent.subIdStart; count = 65536; }];
      };
      environment.systemPackages = [ (if agent.enable then agent.package else master.package) ];
    })

    (mkIf agent.enable {
      virtualisation.podman.enable = true;
      # podman's API for the agent, in the user's own systemd manager.
      systemd.user.sockets.podman.wantedBy = [ "sockets.target" ];

      systemd.tmpfiles.rules = [ "d ${agent.dataDir} 0750 ${agent.user} ${agent.user} -" ];

      # First install only: later binaries come from `mcp agent upgrade`.
      system.activationScripts.mcp-agent-binary = {
        deps = [ "users" ];
        text = ''
          if [ ! -e ${agent.dataDir}/mcp-agent ]; then
            install -d -o ${agent.user} -g ${agent.user} -m 0750 ${agent.dataDir}
            install -o ${agent.user} -g ${agent.user} -m 0755 \
              ${agent.package}/bin/mcp-agent ${agent.dataDir}/mcp-agent
          fi
        '';
      };

      systemd.services.mcp-agent = {
        description = "mcp agent (rootless podman services)";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        requires = [ "user@${toString agent.uid}.service" ];
        after = [ "network-online.target" "user@${toString agent.uid}.service" ];
        environment = {
          XDG_RUNTIME_DIR = "/run/user/${toString agent.uid}";
          MCP_LOG = "info";
        };
        serviceConfig = hardening // {
          Type = "simple";
          User = agent.user;
          Group = agent.user;
          ExecStart = "${agent.dataDir}/mcp-agent run --config ${configFile agent "agent"}";
          ReadWritePaths = [ agent.dataDir "/run/user/${toString agent.uid}" ];
          # Stop the agent only: containers keep running.
          KillMode = "process";
          CapabilityBoundingSet = "";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
        };
      };

      security.doas = mkIf agent.restartWithDoas {
        enable = true;
        extraRules = [{
          users = [ agent.user ];
          cmd = "systemctl";
          args = [ "restart" "mcp-agent" ];
          noPass = true;
        }];
      };

      networking.nameservers = lib.mkAfter agent.fallbackResolvers;
      services.resolved.fallbackDns = mkIf (agent.fallbackResolvers != [ ]) agent.fallbackResolvers;
    })

    (mkIf master.enable {
      systemd.tmpfiles.rules = [ "d ${master.dataDir} 0750 ${agent.user} ${agent.user} -" ];
      systemd.services.mcp-master = {
        description = "mcp master (fleet control plane)";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        environment.MCP_LOG = "info";
        serviceConfig = hardening // {
          Type = "simple";
          User = agent.user;
          Group = agent.user;
          ExecStart = "${master.package}/bin/mcp-master run --config ${configFile master "master"}";
          ReadWritePaths = [ master.dataDir ];
          CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
          AmbientCapabilities = "CAP_NET_BIND_SERVICE";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        };
      };
    })
  ];
}
