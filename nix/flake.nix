# mcp: flake building the binaries and the NixOS module.
#
#   nix build ./nix#mcp            # mcp, mcp-agent, mcp-master (glibc)
#   nix build ./nix#mcp-static     # static musl binaries (what dev/release builds)
#   imports = [ mcp.nixosModules.default ];  services.mcp-agent.enable = true;
#
# The flake lives in nix/; its source is the whole repository (`../`).
{
  description = "mcp: fleet control plane for rootless podman services";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
      commit = self.shortRev or self.dirtyShortRev or "unknown";
      mcpFor = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "mcp";
        version = cargoToml.workspace.package.version;
        src = nixpkgs.lib.cleanSource ../.;
        cargoLock.lockFile = ../Cargo.lock;
        cargoBuildFlags = [ "-p" "mcp-agent" "-p" "mcp-master" "-p" "mcp-cli" ];
        # `--version` and NodeStatus report this commit.
        env.MCP_GIT_COMMIT = commit;
        # The tests need root, rootless podman and sshd: run them with dev/test.
        doCheck = false;
        meta = {
          description = "mcp fleet control plane (agent, master, CLI)";
          mainProgram = "mcp";
          platforms = systems;
        };
      };
    in
    {
      packages = forAllSystems (pkgs: {
        mcp = mcpFor pkgs;
        mcp-static = mcpFor pkgs.pkgsStatic;
        default = mcpFor pkgs;
      });

      nixosModules.default = import ./module.nix { inherit self; };
      nixosModules.mcp = self.nixosModules.default;
    };
}
