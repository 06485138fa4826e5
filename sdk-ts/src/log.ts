/** Logging through the host: lines land in its log with the plugin's name and version. */
import { log as hostLog } from "switchboard:adapter/log@0.1.0";

export function debug(message: string): void {
  hostLog("debug", message);
}
export function info(message: string): void {
  hostLog("info", message);
}
export function warn(message: string): void {
  hostLog("warn", message);
}
export function error(message: string): void {
  hostLog("error", message);
}
