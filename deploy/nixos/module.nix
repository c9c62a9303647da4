# NixOS module: services.ncps-edge. Import it, then e.g.
#   services.ncps-edge = {
#     enable = true;
#     package = ncps-edge;   # your build of this repository (its binary has the handler inside)
#     settings.cache = {
#       hostname = "cache.example.org";
#       upstream.urls = [ "https://cache.nixos.org" ];
#       upstream.public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
#     };
#     secretKeyFile = "/run/keys/ncps-edge.sk";
#   };
# `settings` is ncps-edge's config.yaml as Nix (the keys of
# runtime/src/config/yaml.rs); secrets go in `environmentFile`.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ncps-edge;
  inherit (lib) mkEnableOption mkIf mkOption types;
  # The node's defaults under the NixOS layout; `settings` overrides them.
  settings = lib.recursiveUpdate {
    server.addr = ":8501";
    cache.storage.local = "/var/lib/ncps-edge";
  } cfg.settings;
  settingsFile = (pkgs.formats.yaml { }).generate "ncps-edge.yaml" settings;
  port = lib.toInt (lib.last (lib.splitString ":" settings.server.addr));
in
{
  options.services.ncps-edge = {
    enable = mkEnableOption "ncps-edge, a Nix binary cache proxy for the edge";

    package = mkOption {
      type = types.package;
      description = "The ncps-edge package (its handler is built into the binary).";
    };

    settings = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      description = "ncps-edge's config.yaml as Nix; unknown keys make the service refuse to start.";
    };

    secretKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "Nix secret key to sign with; without one, a key is generated and kept in the database.";
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "Environment file with secrets (CACHE_PUT_TOKEN=…, CACHE_REDIS_PASSWORD=…).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listening port in the firewall.";
    };

    clientSnippet = mkOption {
      type = types.str;
      readOnly = true;
      description = "nix.conf lines for clients of this cache (append the cache's public key from /pubkey).";
    };
  };

  config = mkIf cfg.enable {
    services.ncps-edge.clientSnippet = ''
      substituters = http://${settings.cache.hostname}:${toString port} https://cache.nixos.org
      trusted-public-keys = <output of http://${settings.cache.hostname}:${toString port}/pubkey> cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    '';

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ port ];

    systemd.services.ncps-edge = {
      description = "ncps-edge Nix binary cache proxy";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " ([
          "${cfg.package}/bin/ncps-edge" "serve" "--config" "${settingsFile}"
        ] ++ lib.optionals (cfg.secretKeyFile != null) [ "--cache-secret-key-path" "%d/secret-key" ]);
        LoadCredential = lib.optionals (cfg.secretKeyFile != null) [ "secret-key:${cfg.secretKeyFile}" ];
        EnvironmentFile = lib.optionals (cfg.environmentFile != null) [ cfg.environmentFile ];
        DynamicUser = true;
        StateDirectory = "ncps-edge";
        WorkingDirectory = "/var/lib/ncps-edge";
        KillSignal = "SIGTERM";
        TimeoutStopSec = "45s";
        Restart = "on-failure";
        RestartSec = "2s";
        LimitNOFILE = 65536;
        UMask = "0077";
        CapabilityBoundingSet = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
      };
    };
  };
}
