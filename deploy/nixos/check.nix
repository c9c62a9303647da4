# Offline check of module.nix and client.nix without nixpkgs: a minimal
# stand-in for the parts of `lib` and `pkgs` they use, enough to evaluate
# their options and the service they produce.
#   nix-instantiate --eval --strict --json deploy/nixos/check.nix
let
  types = {
    package = "package";
    bool = "bool";
    str = "str";
    path = "path";
    anything = "anything";
    attrsOf = t: "attrsOf ${t}";
    nullOr = t: "nullOr ${t}";
  };
  lib = rec {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
    mkIf = cond: value: if cond then value else { };
    mkBefore = x: x;
    toInt = s: builtins.fromJSON s;
    last = l: builtins.elemAt l (builtins.length l - 1);
    splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
    inherit (builtins) concatStringsSep;
    optionals = cond: l: if cond then l else [ ];
    recursiveUpdate = a: b:
      a // builtins.mapAttrs (n: v: if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then recursiveUpdate a.${n} v else v) b;
  };
  pkgs.formats.yaml = _: { generate = name: _value: "/nix/store/00000000000000000000000000000000-${name}"; };
  service = import ./module.nix {
    inherit lib pkgs;
    config.services.ncps-edge = {
      enable = true;
      package = "/nix/store/00000000000000000000000000000000-ncps-edge";
      settings.cache = {
        hostname = "cache.example.org";
        upstream.urls = [ "https://cache.nixos.org" ];
      };
      secretKeyFile = "/run/keys/ncps-edge.sk";
      environmentFile = "/run/keys/ncps-edge.env";
      openFirewall = true;
    };
  };
  client = import ./client.nix {
    inherit lib;
    config.services.ncps-edge-client = { url = "http://cache.example.org:8501"; publicKey = "cache.example.org-1:AAAA"; };
  };
in
{
  options = builtins.attrNames service.options.services.ncps-edge;
  inherit (service.config.systemd.services.ncps-edge.serviceConfig) ExecStart LoadCredential EnvironmentFile DynamicUser StateDirectory;
  ports = service.config.networking.firewall.allowedTCPPorts;
  clientSnippet = service.config.services.ncps-edge.clientSnippet;
  substituters = client.config.nix.settings.substituters;
}
